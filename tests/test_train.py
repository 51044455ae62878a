"""Training loop: schedule, frozen backbone, evaluation, model selection, errors, exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_vit
from torch.utils.data import Dataset, TensorDataset

from tcpa_core import CheckpointError, DatasetError, EmptyDatasetError, PromptConfig
from tcpa_core.checkpoint import load_checkpoint, load_training_state, read_checkpoint
from tcpa_core.model import build_model
from tcpa_core.train import (
    TrainConfig,
    TrainConfigError,
    build_optimizer,
    build_scheduler,
    evaluate,
    extract_features,
    lr_at_step,
    resume_status,
    train,
)
from tcpa_core.weights_io import backbone_fingerprint

POOLS = dict(method="tcpa", cls_pool_size=4, image_pool_size=4, cls_topk=2, image_topk=2)
FAST = dict(epochs=3, batch_size=8, lr=1e-2, warmup_epochs=1, random_epochs=1, progress=False, seed=3)


def make_model(method: str = "tcpa", seed: int = 0, dropout: float = 0.1, num_classes: int = 3):
    cfg = PromptConfig(**{**POOLS, "method": method, "prompt_dropout": dropout})
    torch.manual_seed(seed + 100)
    return build_model(tiny_vit(seed=seed, num_classes=0), cfg, num_classes=num_classes)


def make_data(n: int, seed: int, num_classes: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    images = torch.randn(n, 3, 32, 32, generator=g) * 0.5
    images[:, 0, :8, :8] += labels.view(-1, 1, 1).float()  # a learnable signal in one corner
    return TensorDataset(images, labels)


class CrashAfter(Dataset):
    """Wraps a dataset and raises after ``limit`` items were read (a crash in the middle of an epoch)."""

    def __init__(self, base: Dataset, limit: int) -> None:
        self.base, self.limit, self.reads = base, limit, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        self.reads += 1
        if self.reads > self.limit:
            raise RuntimeError("simulated crash")
        return self.base[index]


# ------------------------------------------------------------------------------------------ schedule
def test_lr_schedule_warms_up_linearly_then_decays_by_cosine():
    total, warmup, base, low = 100, 10, 1e-3, 1e-5
    lrs = [lr_at_step(s, total, warmup, base, low) for s in range(total)]
    assert lrs[:warmup] == pytest.approx([base * (s + 1) / warmup for s in range(warmup)])
    assert max(lrs) == pytest.approx(base) and lrs.index(max(lrs)) in (warmup - 1, warmup)
    decay = lrs[warmup:]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert lr_at_step(warmup + 45, total, warmup, base, low) == pytest.approx((base + low) / 2)
    assert lr_at_step(total, total, warmup, base, low) == pytest.approx(low)


def test_scheduler_follows_the_schedule_per_step():
    model = make_model()
    cfg = TrainConfig(epochs=4, lr=2e-3, min_lr=0.0, warmup_epochs=1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at_step(s, 20, 5, 2e-3, 0.0) for s in range(20)])
    assert seen[0] == pytest.approx(2e-3 / 5) and seen[4] == pytest.approx(2e-3)


def test_optimizer_holds_only_trainable_parameters():
    model = make_model()
    opt = build_optimizer(model, TrainConfig())
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_opt == trainable and not in_opt & {id(p) for p in model.backbone.parameters()}


# ------------------------------------------------------------------------------------------ training
def test_one_epoch_changes_only_trainable_parameters(tmp_path):
    model = make_model()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    fingerprint = backbone_fingerprint(model.backbone)
    trainable_before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    train(model, make_data(16, 0), None, TrainConfig(**{**FAST, "epochs": 1}), tmp_path)
    assert backbone_fingerprint(model.backbone) == fingerprint
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k
    assert not model.backbone.training
    after = model.trainable_state_dict()
    changed = [k for k in after if not torch.equal(after[k], trainable_before[k])]
    assert set(changed) == set(after)  # head, keys and prompts all moved


@pytest.mark.parametrize("method", ["vpt-deep", "none"])
def test_other_methods_train_and_select_by_validation(tmp_path, method):
    model = make_model(method)
    summary = train(model, make_data(24, 0), make_data(12, 1), TrainConfig(**FAST), tmp_path)
    accs = [h["val_acc"] for h in summary["history"]]
    assert summary["best_epoch"] == accs.index(max(accs)) + 1
    assert summary["best_val_acc"] == max(accs)
    _, meta = read_checkpoint(tmp_path / "best")
    assert meta["epoch"] == summary["best_epoch"]
    assert meta["prompt_config"]["method"] == method


def test_training_records_history_and_random_selection_warmup(tmp_path):
    model = make_model()
    seen: list[bool] = []
    original = type(model).forward

    def spy(self, images, return_pool_loss=False):
        seen.append(self.random_selection)
        return original(self, images, return_pool_loss)

    type(model).forward = spy
    try:
        summary = train(model, make_data(16, 0), make_data(8, 1),
                        TrainConfig(**{**FAST, "epochs": 3, "random_epochs": 2}), tmp_path)
    finally:
        type(model).forward = original
    assert [h["random_selection"] for h in summary["history"]] == [True, True, False]
    # 2 train steps per epoch (random only in epochs 1-2), 1 val batch per epoch (never random).
    assert seen == [True, True, False] * 2 + [False, False, False]
    assert model.random_selection is False
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["finished"] and len(on_disk["history"]) == 3
    for h in on_disk["history"]:
        assert h["train_seconds"] > 0 and math.isfinite(h["train_loss"]) and 0 <= h["val_acc"] <= 1
    assert on_disk["seconds_per_epoch"] == pytest.approx(sum(h["train_seconds"] for h in on_disk["history"]) / 3)


def test_mixup_label_smoothing_and_clipping_train(tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 1, "mixup_alpha": 0.4, "label_smoothing": 0.1, "grad_clip": 0.5})
    summary = train(make_model(), make_data(16, 0), make_data(8, 1), cfg, tmp_path)
    assert math.isfinite(summary["history"][0]["train_loss"])


def test_empty_datasets_and_bad_labels_are_clear_errors(tmp_path):
    empty = TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long))
    with pytest.raises(EmptyDatasetError, match="training dataset is empty"):
        train(make_model(), empty, None, TrainConfig(**FAST), tmp_path)
    with pytest.raises(EmptyDatasetError, match="validation dataset is empty"):
        train(make_model(), make_data(8, 0), empty, TrainConfig(**FAST), tmp_path)
    with pytest.raises(EmptyDatasetError):
        evaluate(make_model(), empty)
    bad = TensorDataset(torch.zeros(4, 3, 32, 32), torch.tensor([0, 1, 5, 2]))
    with pytest.raises(DatasetError, match=r"Label 5 is outside \[0, 3\)"):
        evaluate(make_model(), bad)


def test_bad_train_config_values_are_refused():
    with pytest.raises(TrainConfigError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(TrainConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)


# ------------------------------------------------------------------------------------------ evaluation
def test_evaluate_counts_predictions_and_uses_top_k_selection():
    model = make_model(dropout=0.0)
    data = make_data(13, 2)
    images, labels = data.tensors
    with torch.no_grad():
        logits = model.eval()(images)
    expected = (logits.argmax(-1) == labels).float().mean().item()
    model.train()
    model.random_selection = True
    result = evaluate(model, data, batch_size=4, return_predictions=True)
    assert result.num_samples == 13
    assert result.accuracy == pytest.approx(expected)
    assert result.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert torch.equal(result.predictions, logits.argmax(-1))
    assert model.training and model.random_selection  # restored


def test_extract_features_matches_forward_features():
    model = make_model(dropout=0.0).eval()
    data = make_data(7, 4)
    feats, labels = extract_features(model, data, batch_size=3)
    with torch.no_grad():
        expected = model.forward_features(data.tensors[0])
    torch.testing.assert_close(feats, expected)
    assert torch.equal(labels, data.tensors[1])


# ------------------------------------------------------------------------------------------ resume
def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(out / "last")[0]


def test_resume_after_a_crash_gives_the_uninterrupted_weights(tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 3})
    train_set, val_set = make_data(20, 0), make_data(8, 1)
    full = train(make_model(), train_set, val_set, cfg, tmp_path / "full")

    crashing = CrashAfter(train_set, limit=20 + 13)  # dies in the middle of epoch 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_model(), crashing, val_set, cfg, tmp_path / "crash")
    assert load_training_state(tmp_path / "crash" / "train_state.pt")["epoch"] == 1
    assert resume_status(tmp_path / "crash", make_model(), train_set, val_set, cfg) == "resumable"

    resumed = train(make_model(seed=0), train_set, val_set, cfg, tmp_path / "crash", resume=True)
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "crash")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["val_acc"] for h in resumed["history"]] == [h["val_acc"] for h in full["history"]]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]

    # A finished run is reused as is; a different configuration is refused.
    assert resume_status(tmp_path / "crash", make_model(), train_set, val_set, cfg) == "finished"
    again = train(make_model(), train_set, val_set, cfg, tmp_path / "crash", resume=True)
    assert again["history"] == resumed["history"]
    other = TrainConfig(**{**FAST, "epochs": 3, "lr": 5e-3})
    assert resume_status(tmp_path / "crash", make_model(), train_set, val_set, other) == "incompatible"
    with pytest.raises(CheckpointError, match=r"different run \(train_config.lr"):
        train(make_model(), train_set, val_set, other, tmp_path / "crash", resume=True)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads({threads})
    from test_train import make_data, make_model, FAST
    from tcpa_core.train import TrainConfig, train

    class Slow(torch.utils.data.Dataset):
        def __init__(self, base):
            self.base = base
        def __len__(self):
            return len(self.base)
        def __getitem__(self, i):
            time.sleep(0.02)
            return self.base[i]

    train(make_model(), Slow(make_data(20, 0)), make_data(8, 1), TrainConfig(**{{**FAST, "epochs": 4}}), {out!r})
""")


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_weights(tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 4})
    train_set, val_set = make_data(20, 0), make_data(8, 1)
    killed = tmp_path / "killed"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), threads=torch.get_num_threads(), out=str(killed))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    state = killed / "train_state.pt"
    deadline = time.monotonic() + 90
    try:
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    epochs_done = load_training_state(state)["epoch"]
    assert 1 <= epochs_done < 4

    train(make_model(), train_set, val_set, cfg, killed, resume=True)
    train(make_model(), train_set, val_set, cfg, tmp_path / "full")
    a, b = _final_weights(tmp_path / "full"), _final_weights(killed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    best = load_checkpoint(killed / "best", backbone=tiny_vit(seed=0, num_classes=0))
    assert best.checkpoint_meta["epoch"] == json.loads((killed / "summary.json").read_text())["best_epoch"]
