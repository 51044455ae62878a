"""Write a ViT-B/16-sized pair of checkpoints (TCPA and VPT-deep) for the dashboard benchmark.

Usage: python benchmarks/make_vitb_checkpoints.py [--out DIR]   (default: a new temporary folder)

timm's ``vit_base_patch16_224`` (224 px, 14x14 patch grid, 12 blocks, width 768, 12 heads) with random
weights (nothing is downloaded): the backbone is saved to ``backbone.safetensors`` in the folder and both
checkpoints name it, so the dashboard rebuilds them offline. Pools are the demo's (18/18, top-10), VPT-deep has
10 prompts; the heads are random too, so the numbers shown are meaningless, only the sizes matter. The checkpoints
record the digits task as their dataset (its images are resized to 224 px). Prints the folder to list.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from tcpa_core import PromptConfig, build_model
from tcpa_core.checkpoint import save_checkpoint
from tcpa_core.weights_io import backbone_state

BACKBONE = "vit_base_patch16_224"
POOLS = {"cls_pool_size": 18, "image_pool_size": 18, "cls_topk": 10, "image_topk": 10}
DIGITS = {"name": "digits", "root": None, "seed": 0, "options": {}}


def write_pair(root: Path) -> Path:
    """``root/demo_out`` with ``tcpa/best`` and ``vpt-deep/best`` on one random ViT-B/16; returns that folder."""
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    tcpa = build_model(BACKBONE, PromptConfig(method="tcpa", **POOLS), num_classes=10, pretrained=False)
    weights = root / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone_state(tcpa.backbone).items()}, str(weights))
    vpt = build_model(BACKBONE, PromptConfig(method="vpt-deep", num_prompts=10), num_classes=10, checkpoint=weights,
                      pretrained=False)
    source = {"name": BACKBONE, "pretrained": False, "weights": str(weights), "kwargs": {}}
    meta = {"dataset": DIGITS, "class_names": [str(i) for i in range(10)], "metrics": {}, "epoch": 0}
    demo = root / "demo_out"
    for name, model in (("tcpa", tcpa), ("vpt-deep", vpt)):
        save_checkpoint(model, demo / name / "best", dict(meta), backbone_source=source)
    (demo / "summary.json").write_text(json.dumps({"methods": {}}))
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder to write into (default: a new temporary folder)")
    args = parser.parse_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tcpa_vitb_"))
    print(write_pair(root))


if __name__ == "__main__":
    main()
