"""The shipped demo backbone: weights and card agree, and the committed pretraining script runs end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

from tcpa_core.backbone import DEMO_ARCH, DEMO_BACKBONE, DEMO_WEIGHTS, demo_card

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pretrain_backbone.py"


def test_shipped_weights_match_their_card_and_load_into_timm():
    card = demo_card()
    assert DEMO_WEIGHTS.stat().st_size == card["weights"]["bytes"] < 25 * 1024 * 1024
    assert {k: card["architecture"][k] for k in DEMO_ARCH} == DEMO_ARCH
    state = timm.create_model(DEMO_BACKBONE, pretrained=True, num_classes=0).state_dict()
    with safe_open(str(DEMO_WEIGHTS), "pt") as weights:
        names = set(weights.keys())
        assert weights.metadata()["architecture"] == DEMO_BACKBONE
        assert not any(name.startswith("head.") for name in names)
        assert sum(math.prod(weights.get_slice(name).get_shape()) for name in names) == \
            card["architecture"]["parameters"]
        assert set(state) == names
        assert torch.equal(state["blocks.3.attn.qkv.weight"], weights.get_tensor("blocks.3.attn.qkv.weight"))
    # the card's record of the run is complete and reproducible from its command
    assert card["command"].startswith("python scripts/pretrain_backbone.py")
    assert card["training"]["steps"] == card["arguments"]["steps"] and card["training"]["seed"] == 0
    assert 0.0 < card["digits_linear_probe"]["test_accuracy"] <= 1.0 and card["pretraining_wall_clock_s"] > 0


@pytest.mark.slow
def test_pretraining_script_writes_weights_and_card(tmp_path):
    out = tmp_path / "weights" / "tiny_run.safetensors"
    args = ["--steps", "4", "--batch-size", "8", "--num-classes", "4", "--eval-samples", "16",
            "--probe-train-copies", "1", "--log-every", "2", "--workers", "0", "--out", str(out)]
    result = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["steps"] == 4 and [h["step"] for h in card["history"]] == [2, 4]
    assert card["weights"]["bytes"] == out.stat().st_size
    assert "--out" not in card["command"] and str(tmp_path) not in json.dumps(card)
    assert card["command"].endswith("--workers 0")
    with safe_open(str(out), "pt") as weights:
        assert set(weights.keys()) == set(timm.create_model(DEMO_BACKBONE, num_classes=0).state_dict())
