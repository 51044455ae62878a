"""tcpa-viz compare: end to end on a tiny configuration, reuse of finished runs, the paired bootstrap."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from scipy import stats

from tcpa_core.checkpoint import load_checkpoint
from tcpa_core.methods import get_method, list_methods
from tcpa_core.train import evaluate
from tcpa_viz.bootstrap import BootstrapInputError, paired_bootstrap_ci, per_image_difference
from tcpa_viz.cli import _open_split, _transforms, main
from tcpa_viz.compare import (
    CSV_COLUMNS,
    PAIRS,
    TABLE3_CHAINS,
    CompareConfig,
    CompareError,
    display_name,
    method_prompt_config,
    method_role,
    run_dir_for,
)
from tcpa_viz.figures.common import labels_of
from tcpa_viz.figures.compare_panel import compare_points

ARCH = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
METHODS = ("vpt-deep", "tcpa")
LRS = (1e-3, 3e-2)


def _args(out: Path, weights: Path, *extra: str) -> list[str]:
    return ["compare", "--backbone", "vit_tiny_patch16_224", "--backbone-kwargs", json.dumps(ARCH),
            "--checkpoint", str(weights), "--max-samples", "20", "--methods", ",".join(METHODS), "--seeds", "0",
            "--lrs", ",".join(map(str, LRS)), "--epochs", "1", "--batch-size", "10", "--cls-pool-size", "4",
            "--image-pool-size", "4", "--cls-topk", "2", "--image-topk", "2", "--num-prompts", "4",
            "--bootstrap-samples", "500", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    weights = root / "tiny.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=0, **ARCH).state_dict(), weights)
    out = root / "out"
    assert main(_args(out, weights)) == 0
    return out, weights


def _rows(out: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (out / "compare.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _fingerprints(out: Path) -> dict[str, tuple[int, str]]:
    files = [p for p in sorted((out / "runs").rglob("*")) if p.is_file()]
    return {str(p): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files}


@pytest.mark.slow
def test_compare_end_to_end(compared):
    out, weights = compared
    columns, rows = _rows(out)
    assert tuple(columns[:len(CSV_COLUMNS)]) == CSV_COLUMNS
    assert [(r["method"], float(r["lr"])) for r in rows] == [(m, lr) for m in METHODS for lr in LRS]
    summary = json.loads((out / "compare_summary.json").read_text())
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        chosen = [r for r in mine if r["selected"] == "True"]
        assert len(chosen) == 1 and all(r["test_acc"] == "" for r in mine if r["selected"] == "False")
        best_val = max(float(r["val_acc"]) for r in mine)
        expected_lr = min(float(r["lr"]) for r in mine if float(r["val_acc"]) == best_val)
        assert float(chosen[0]["lr"]) == expected_lr == summary["methods"][method]["lr"]
        assert int(chosen[0]["trainable_params"]) > 0 and float(chosen[0]["seconds_per_epoch"]) > 0
        # The recorded test accuracy equals an independent evaluation of the run's best checkpoint.
        model = load_checkpoint(run_dir_for(out, method, expected_lr, 0) / "best", checkpoint=weights)
        _, eval_tf = _transforms(model, "digits", augment=False)
        test = _open_split(model.checkpoint_meta["dataset"], "test", eval_tf)
        result = evaluate(model, test, return_predictions=True)
        assert float(chosen[0]["test_acc"]) == pytest.approx(result.accuracy)
        saved = json.loads((run_dir_for(out, method, expected_lr, 0) / "test_result.json").read_text())
        assert saved["correct"] == (result.predictions.numpy() == labels_of(test)).astype(int).tolist()
    (pair,) = summary["pairs"]
    assert (pair["a"], pair["b"]) == ("tcpa", "vpt-deep")
    accs = {m: summary["methods"][m]["test_acc_mean"] for m in METHODS}
    assert pair["difference"] == pytest.approx(accs["tcpa"] - accs["vpt-deep"])
    assert pair["low"] <= pair["difference"] <= pair["high"]
    assert "| TCPA - VPT-deep |" in (out / "compare_summary.md").read_text()
    # Figure 1's time/accuracy chart draws every method of compare.csv, with error bars.
    points = compare_points(out / "compare.csv")
    assert [p.label for p in points] == ["VPT-deep", "TCPA"]
    html = (out / "figures" / "figure1.html").read_text()
    for p in points:
        assert re.search(r'"error_x":\{[^}]*\},"error_y":\{[^}]*\}[^{}]*"name":"' + re.escape(p.label) + '"', html) \
            or re.search(r'"name":"' + re.escape(p.label) + r'"[^{}]*"error_x"', html), p.label
    assert (out / "figures" / "figure1.png").stat().st_size > 0
    assert (out / "figures" / "table3.png").stat().st_size > 0 and (out / "figures" / "table3.html").is_file()


@pytest.mark.slow
def test_second_invocation_reuses_finished_runs(compared, capsys):
    out, weights = compared
    before, csv_before = _fingerprints(out), _rows(out)[1]
    capsys.readouterr()
    assert main(_args(out, weights, "--no-figures")) == 0
    log = capsys.readouterr().out
    assert log.count("reusing the finished run") == len(METHODS) * len(LRS)
    assert "training 1 epochs" not in log and f"{len(METHODS) * len(LRS)} runs: 0 trained" in log
    assert _fingerprints(out) == before
    assert _rows(out)[1] == csv_before


@pytest.mark.slow
def test_changed_configuration_is_a_one_line_error(compared, capsys):
    out, weights = compared
    assert main(_args(out, weights, "--epochs", "2", "--no-figures")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--force" in err[0]


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_folder_is_locked(compared, capsys):
    out, weights = compared
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tcpa_core.run_lock import RunLock\n"
         "with RunLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert main(_args(out, weights, "--no-figures")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(holder.pid) in err[0]
    finally:
        holder.kill()
        holder.wait()


def test_bad_comparisons_are_named_errors(capsys):
    with pytest.raises(CompareError, match="repeated"):
        CompareConfig(methods=["tcpa", "tcpa"])
    with pytest.raises(CompareError, match="learning rates"):
        CompareConfig(lrs=[0.0])
    with pytest.raises(CompareError, match="Unknown method"):
        method_prompt_config("vpt-medium")
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--methods", "tcpa,nope"])
    assert exc.value.code == 2 and "unknown method" in capsys.readouterr().err
    assert main(["compare", "--lr", "0.1", "--lrs", "0.1,0.2"]) == 2
    assert "--lrs only" in capsys.readouterr().err


@pytest.mark.parametrize("method", list_methods())
def test_every_registered_method_can_be_compared(method):
    cfg = method_prompt_config(method, {"cls_topk": 3, "num_prompts": 5})
    assert cfg.spec.name == method and cfg.cls_topk == 3 and cfg.num_prompts == 5
    assert display_name(method) == get_method(method).display_name
    assert method_role(method) == get_method(method).role


def test_pairs_and_chains_name_registered_methods():
    names = set(list_methods())
    assert {m for pair in PAIRS for m in pair} <= names and {m for c in TABLE3_CHAINS for m in c} <= names
    assert all(method_role(a) == "tcpa" for a, _ in PAIRS)
    assert method_prompt_config("vfpt+tcpa").fourier and method_prompt_config("vp+tcpa").resolved_input_prompt == "pad"


# ------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    # a is right on every image b gets right plus 30 more of 200: d = 1 on 30 images, 0 elsewhere. The bootstrap
    # mean of d is then Binomial(200, 0.15) / 200, whose percentiles are computed directly.
    n, k = 200, 30
    b = np.zeros(n, dtype=int)
    b[:100] = 1
    a = b.copy()
    a[100:100 + k] = 1
    ci = paired_bootstrap_ci(a, b, samples=20_000, confidence=0.95, seed=3)
    low, high = stats.binom.ppf([0.025, 0.975], n, k / n) / n
    assert ci.difference == pytest.approx(k / n)
    assert abs(ci.low - low) <= 1.0 / n + 1e-12 and abs(ci.high - high) <= 1.0 / n + 1e-12
    assert ci.num_images == n and ci.num_seeds == 1


def test_bootstrap_pairs_within_seed_and_averages_over_seeds():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(3, 50))
    b = rng.integers(0, 2, size=(3, 50))
    d = per_image_difference(a, b)
    assert np.allclose(d, np.mean(a - b, axis=0))
    ci = paired_bootstrap_ci(a, b, samples=2000)
    assert ci.difference == pytest.approx(np.mean(a.mean(axis=1) - b.mean(axis=1)))
    assert ci.num_seeds == 3 and ci.low < ci.difference < ci.high
    # Pairing: b identical to a but for two images gives a tight interval, although both accuracies vary a lot.
    same = a.copy()
    same[:, :2] = 1 - same[:, :2]
    tight = paired_bootstrap_ci(a, same, samples=2000)
    assert tight.high - tight.low <= 4 / 50 + 1e-12
    identical = paired_bootstrap_ci(a, a)
    assert (identical.low, identical.difference, identical.high) == (0.0, 0.0, 0.0)


def test_bootstrap_rejects_unpaired_input():
    with pytest.raises(BootstrapInputError, match="same"):
        paired_bootstrap_ci(np.ones((2, 5)), np.ones((1, 5)))
    with pytest.raises(BootstrapInputError, match="correctness"):
        paired_bootstrap_ci(np.full(5, 0.5), np.ones(5))
