"""Shared fixtures: tiny timm ViTs so the suite runs on 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_VITS = {
    "plain": dict(img_size=32, patch_size=8),
    "registers": dict(img_size=32, patch_size=8, reg_tokens=3),
    "non_square": dict(img_size=(40, 24), patch_size=8),
    "avg_pool_qk_norm": dict(img_size=32, patch_size=8, global_pool="avg", qk_norm=True, fc_norm=True),
    "no_cls_token": dict(img_size=32, patch_size=8, class_token=False, global_pool="avg"),
    "layer_scale": dict(img_size=48, patch_size=16, init_values=0.1, no_embed_class=True),
}


def tiny_vit(variant: str = "plain", num_classes: int = 5, seed: int = 0, **overrides) -> VisionTransformer:
    """A depth-2, width-64 timm VisionTransformer with random weights (eval mode)."""
    torch.manual_seed(seed)
    args = dict(embed_dim=64, depth=2, num_heads=2, num_classes=num_classes)
    args.update(TINY_VITS[variant])
    args.update(overrides)
    return VisionTransformer(**args).eval()


def images_for(model: VisionTransformer, batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *model.patch_embed.img_size, generator=g)


@pytest.fixture(params=sorted(TINY_VITS))
def vit_variant(request) -> str:
    return request.param
