"""Synthetic TCPA-style captures (random attention with a real TCPA mask), for examples and tests.

They follow the masking rule of TCPA: every query sees the prefix, the shared prompts and all patches;
prefix queries (CLS and registers) see only their selected CLS-pool entries, patch queries only their
selected image-pool entries. Attention is ``softmax(logits) * mask`` without renormalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tcpa_core.layout import TokenLayout


@dataclass
class SyntheticLayer:
    """One layer of a synthetic capture.

    Attributes:
        attn: ``[batch, head, query, key]`` attention after the mask (rows sum to < 1).
        attn_raw: ``[batch, head, query, key]`` softmax before the mask (rows sum to 1).
        mask: ``[batch, query, key]`` bool.
        cls_assign: ``[batch, cls_topk]`` CLS-pool entries, most similar first.
        image_assign: ``[batch, num_patches, image_topk]`` image-pool entries, most similar first.
    """

    attn: torch.Tensor
    attn_raw: torch.Tensor
    mask: torch.Tensor
    cls_assign: torch.Tensor
    image_assign: torch.Tensor


def synthetic_layer(
    layout: TokenLayout,
    batch: int = 2,
    heads: int = 3,
    cls_topk: int = 1,
    image_topk: int = 1,
    seed: int = 0,
    temperature: float = 1.0,
) -> SyntheticLayer:
    """Random attention for ``layout`` with a TCPA mask from random top-k selections.

    ``temperature`` scales the random logits (larger = peakier rows). With no pools in the layout the
    assignments are empty (``[batch, 0]`` and ``[batch, num_patches, 0]``) and the mask is all ones.
    """
    g = torch.Generator().manual_seed(seed)
    lp = max(int(layout.prompt_length), 1)
    n_cls, n_img = layout.num_cls_prompt_keys // lp, layout.num_image_prompt_keys // lp
    kc, ki = (min(cls_topk, n_cls), min(image_topk, n_img))
    cls_assign = torch.rand(batch, n_cls, generator=g).topk(kc, dim=-1).indices
    image_assign = torch.rand(batch, layout.num_patches, n_img, generator=g).topk(ki, dim=-1).indices
    ks = layout.key_slices()
    mask = torch.ones(batch, layout.num_queries, layout.num_keys, dtype=torch.bool)
    mask[:, :, ks["cls_prompts"]] = False
    mask[:, :, ks["image_prompts"]] = False
    prefix, patches = layout.num_prefix, slice(layout.num_prefix, layout.num_queries)
    for t in range(lp):
        cls_cols = ks["cls_prompts"].start + cls_assign * lp + t
        mask[:, :prefix].scatter_(-1, cls_cols[:, None, :].expand(batch, prefix, kc), True)
        img_cols = ks["image_prompts"].start + image_assign * lp + t
        mask[:, patches].scatter_(-1, img_cols, True)
    logits = torch.randn(batch, heads, layout.num_queries, layout.num_keys, generator=g) * temperature
    attn_raw = logits.softmax(dim=-1)
    attn = attn_raw * mask[:, None].to(attn_raw.dtype)
    return SyntheticLayer(attn, attn_raw, mask, cls_assign, image_assign)
