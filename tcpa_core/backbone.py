"""The embedded demo backbone, registered with timm as ``tcpa_demo_vit``.

A small timm ``VisionTransformer`` (64 px input, 8x8 patches -> 8x8 grid, depth 6, width 192, 3 heads)
pretrained offline on the procedural images of :mod:`tcpa_core.data.procedural` by
``scripts/pretrain_backbone.py``. Its weights and card ship inside the package (``tcpa_core/weights``),
so ``timm.create_model("tcpa_demo_vit", pretrained=True)`` works with no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from .errors import CheckpointError

DEMO_BACKBONE = "tcpa_demo_vit"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_WEIGHTS = WEIGHTS_DIR / f"{DEMO_BACKBONE}.safetensors"
DEMO_CARD = WEIGHTS_DIR / f"{DEMO_BACKBONE}.json"

DEMO_ARCH: dict[str, Any] = dict(
    img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0, class_token=True,
    global_pool="token",
)
DEMO_MEAN = (0.5, 0.5, 0.5)
DEMO_STD = (0.25, 0.25, 0.25)


def demo_card() -> dict[str, Any]:
    """The JSON card of the shipped demo weights (config, data, steps, seed, accuracy)."""
    if not DEMO_CARD.is_file():
        raise CheckpointError(
            f"The demo backbone card {DEMO_CARD.name} is missing from the package; reinstall tcpa-viz "
            "or regenerate it with scripts/pretrain_backbone.py."
        )
    return json.loads(DEMO_CARD.read_text())


@register_model
def tcpa_demo_vit(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Small ViT for offline demos. ``pretrained=True`` loads the weights shipped in the package."""
    for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(timm_only, None)
    model = VisionTransformer(**{**DEMO_ARCH, **kwargs})
    # timm sets ``pretrained_cfg`` on the instance; VisionTransformer does not declare the attribute.
    model.pretrained_cfg = {  # type: ignore[assignment]
        "architecture": DEMO_BACKBONE, "input_size": (3, 64, 64), "mean": DEMO_MEAN, "std": DEMO_STD,
        "num_classes": model.num_classes, "interpolation": "bilinear", "crop_pct": 1.0,
    }
    if pretrained:
        if not DEMO_WEIGHTS.is_file():
            raise CheckpointError(
                f"The demo backbone weights {DEMO_WEIGHTS.name} are missing; run "
                "scripts/pretrain_backbone.py to create them."
            )
        state = load_file(str(DEMO_WEIGHTS))
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad_missing = [k for k in missing if not k.startswith("head.")]
        if bad_missing or unexpected:
            raise CheckpointError(
                f"The demo weights do not fit tcpa_demo_vit{kwargs or ''}: missing {bad_missing[:5]}, "
                f"unexpected {list(unexpected)[:5]}. Use the default architecture arguments."
            )
    return model


def demo_backbone(num_classes: int = 0, pretrained: bool = True, **kwargs: Any) -> VisionTransformer:
    """Create the demo backbone; with ``pretrained`` the shipped weights are loaded (no network)."""
    return tcpa_demo_vit(pretrained=pretrained, num_classes=num_classes, **kwargs)


__all__ = ["DEMO_BACKBONE", "DEMO_ARCH", "DEMO_MEAN", "DEMO_STD", "demo_backbone", "demo_card"]
