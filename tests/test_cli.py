"""The tcpa-viz command line: train and eval end to end, the demo's cache, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tcpa_core import backbone as backbone_module
from tcpa_core.checkpoint import load_checkpoint, read_checkpoint_meta
from tcpa_core.train import evaluate
from tcpa_viz.cli import _open_split, _transforms, build_parser, main

ARCH = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
TINY = ["--backbone", "vit_tiny_patch16_224", "--backbone-kwargs", json.dumps(ARCH)]
POOLS = ["--cls-pool-size", "4", "--image-pool-size", "4", "--cls-topk", "2", "--image-topk", "2"]


def _backbone_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=0, **ARCH).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    weights = _backbone_file(root / "tiny.safetensors", seed=0)
    out = root / "run"
    rc = main(["train", *TINY, "--checkpoint", str(weights), "--dataset", "digits", "--max-samples", "40",
               "--epochs", "2", "--batch-size", "16", *POOLS, "--seed", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    return root, weights, out


def test_cli_train_writes_checkpoints_and_summary(trained_run, capsys):
    root, weights, out = trained_run
    assert (out / "best" / "model.safetensors").is_file() and (out / "last" / "config.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["epochs_done"] == 2 and summary["num_train"] == 40
    meta = read_checkpoint_meta(out / "best")
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["num_classes"] == 10
    assert meta["dataset"]["name"] == "digits" and meta["dataset"]["max_samples"] == 40
    assert meta["backbone"]["name"] == "vit_tiny_patch16_224"
    assert meta["backbone"]["weights"] == str(weights.resolve())
    assert meta["backbone"]["kwargs"] == ARCH
    assert meta["prompt_config"]["cls_pool_size"] == 4 and meta["prompt_config"]["method"] == "tcpa"


def test_cli_eval_matches_a_direct_evaluation(trained_run, capsys):
    root, _, out = trained_run
    report = root / "eval.json"
    rc = main(["eval", "--model", str(out), "--max-samples", "30", "--json", str(report), "--no-progress"])
    assert rc == 0
    result = json.loads(report.read_text())
    assert result["split"] == "test" and result["num_samples"] == 30 and result["dataset"] == "digits"
    assert "accuracy" in capsys.readouterr().out

    model = load_checkpoint(out / "best")  # rebuilt from the recorded name, kwargs and weight file
    spec = {**model.checkpoint_meta["dataset"], "max_samples": 30}
    data = _open_split(spec, "test", _transforms(model, "digits", augment=False)[1])
    direct = evaluate(model, data, batch_size=16)
    assert result["accuracy"] == pytest.approx(direct.accuracy) and result["loss"] == pytest.approx(direct.loss)


def test_cli_eval_with_another_backbone_is_a_one_line_error(trained_run, capsys):
    root, _, out = trained_run
    other = _backbone_file(root / "other.safetensors", seed=1)
    rc = main(["eval", "--model", str(out), "--checkpoint", str(other), "--max-samples", "5", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: This checkpoint was trained on backbone 'vit_tiny_patch16_224'")
    assert "Traceback" not in "\n".join(err)


def test_cli_resume_continues_a_run(trained_run, capsys):
    root, weights, out = trained_run
    args = ["train", *TINY, "--checkpoint", str(weights), "--dataset", "digits", "--max-samples", "40",
            "--epochs", "2", "--batch-size", "16", *POOLS, "--seed", "1", "--out", str(out), "--no-progress"]
    before = (out / "last" / "model.safetensors").read_bytes()
    assert main([*args, "--resume"]) == 0  # finished: nothing to do, nothing rewritten
    assert (out / "last" / "model.safetensors").read_bytes() == before
    assert main([*args[:-5], "--lr", "0.5", *args[-5:], "--resume"]) == 2
    assert "error: Cannot resume" in capsys.readouterr().err


def test_bad_argument_is_one_line_without_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "many"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: tcpa-viz train: argument --epochs")


def test_library_error_in_a_real_process_is_one_line(tmp_path):
    exe = Path(sys.executable).with_name("tcpa-viz")
    proc = subprocess.run([str(exe), "eval", "--model", str(tmp_path / "missing")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No checkpoint at")
    assert str(tmp_path / "missing") in lines[0]


def test_unknown_dataset_is_a_clear_error(capsys):
    assert main(["train", *TINY, "--dataset", "imagenet-22k", "--out", "unused"]) == 2
    assert capsys.readouterr().err.startswith("error: Unknown dataset 'imagenet-22k'")


def test_parser_has_exactly_the_implemented_commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"train", "eval", "demo", "figure", "rank", "app", "atlas", "ablate", "explain",
                                "compare"}


@pytest.mark.slow
def test_demo_trains_both_methods_then_reuses_the_cache(tmp_path, capsys, monkeypatch):
    # Stand-in demo weights (random), so the test does not depend on the shipped file.
    torch.manual_seed(0)
    save_file(backbone_module.tcpa_demo_vit(pretrained=False).state_dict(), tmp_path / "demo.safetensors")
    monkeypatch.setattr(backbone_module, "DEMO_WEIGHTS", tmp_path / "demo.safetensors")
    args = ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--max-samples", "16", "--batch-size", "8",
            "--cls-pool-size", "4", "--image-pool-size", "4", "--cls-topk", "2", "--image-topk", "2",
            "--num-prompts", "4", "--no-progress"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary["methods"]) == {"vpt-deep", "tcpa"}
    for info in summary["methods"].values():
        assert 0 <= info["test_acc"] <= 1 and info["test_samples"] == 16 and info["seconds_per_epoch"] > 0
        assert not info["cached"] and Path(info["checkpoint"], "model.safetensors").is_file()
    assert "tcpa-viz app" in capsys.readouterr().out
    figures = tmp_path / "demo" / "figures"
    assert all((figures / name).is_file() for name in ("figure1.png", "figure3.html", "figure5.png",
                                                       "tsne_metrics.json", "figure6.html", "rank.csv"))
    assert main(args) == 0
    again = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert all(info["cached"] for info in again["methods"].values())
    assert [m["test_acc"] for m in again["methods"].values()] == [m["test_acc"] for m in summary["methods"].values()]
    assert "reusing the finished checkpoint" in capsys.readouterr().out
