"""tcpa_viz.models: run-folder resolution, display images, the demo summary; the demo's prompt settings."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from tcpa_core.checkpoint import WEIGHTS_FILE
from tcpa_core.errors import CheckpointError
from tcpa_viz.cli import _demo_prompt_config
from tcpa_viz.models import display_image, read_demo_summary, resolve_checkpoint


def test_run_folder_resolves_to_best_then_last(tmp_path):
    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    (run / "last" / WEIGHTS_FILE).write_bytes(b"x")
    assert resolve_checkpoint(run) == run / "last"
    (run / "best").mkdir()
    (run / "best" / WEIGHTS_FILE).write_bytes(b"x")
    assert resolve_checkpoint(run) == run / "best"
    assert resolve_checkpoint(run / "best") == run / "best"
    assert resolve_checkpoint(run / "best" / WEIGHTS_FILE) == run / "best" / WEIGHTS_FILE
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resolve_checkpoint(tmp_path / "empty")


def test_display_image_undoes_the_normalisation():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 4, 5)).astype(np.float32) / 255.0
    cfg = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    normalised = (torch.from_numpy(pixels) - torch.tensor(cfg["mean"]).view(3, 1, 1)) / torch.tensor(
        cfg["std"]).view(3, 1, 1)
    shown = display_image(normalised, cfg)
    assert shown.dtype == np.uint8 and shown.shape == (4, 5, 3)
    np.testing.assert_array_equal(shown, np.round(pixels.transpose(1, 2, 0) * 255).astype(np.uint8))
    grey = display_image(torch.zeros(1, 2, 2), {"mean": (0.5,), "std": (1.0,)})
    assert grey.shape == (2, 2, 3) and (grey == 128).all()


def test_demo_summary_is_none_when_missing_or_broken(tmp_path):
    assert read_demo_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text("{not json")
    assert read_demo_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text('{"methods": {}}')
    assert read_demo_summary(tmp_path) == {"methods": {}}


def test_demo_settings_follow_the_fields_each_method_reads():
    """`demo --methods r-tcpa` takes --cls-pool-size like tcpa (the registry's config_fields decide)."""
    args = argparse.Namespace(cls_pool_size=6, image_pool_size=7, cls_topk=2, image_topk=3, num_prompts=5)
    tcpa = _demo_prompt_config(args, "tcpa")
    assert (tcpa.cls_pool_size, tcpa.image_pool_size, tcpa.cls_topk, tcpa.image_topk) == (6, 7, 2, 3)
    r_tcpa = _demo_prompt_config(args, "r-tcpa")
    assert (r_tcpa.method, r_tcpa.cls_pool_size, r_tcpa.image_pool_size) == ("r-tcpa", 6, 7)
    assert r_tcpa.spec.role == tcpa.spec.role == "tcpa"
    assert _demo_prompt_config(args, "vpt-deep").num_prompts == 5
