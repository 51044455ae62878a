"""Prompt tuning: the training loop, evaluation and feature extraction (single process or ``torchrun``).

Recipe (defaults of :class:`TrainConfig`): AdamW on the trainable parameters only (prompts, input prompt,
head; the backbone stays frozen), per-step linear warm-up then cosine decay, cross-entropy plus
``pool_loss_weight`` (0.01) times the TCPA pool loss, random prompt selection for the first
``random_epochs`` epochs (the authors' warm-up), optional mixup and label smoothing, optional gradient
clipping. Prompt dropout lives in the model (active in train mode).

Reproducibility: the data order and every random number of epoch ``e`` are derived from ``(seed, e)``
(and the rank), so a run killed at any point and restarted with ``resume=True`` ends with exactly the
weights of an uninterrupted run. After every epoch rank 0 atomically writes ``last/`` (checkpoint),
``best/`` (when the validation accuracy improved), ``train_state.pt`` (everything needed to resume) and
``summary.json``. Model selection uses the validation split only.

Distributed: under ``torchrun``, call :func:`tcpa_core.distributed.init_distributed` first (the CLI does).
``batch_size`` is the global batch, split evenly over the processes; gradients are averaged by
DistributedDataParallel, so N processes follow the same trajectory as one process with the same global
batch (up to float summation order, and except for per-rank random draws: prompt dropout, random
selection, mixup).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .checkpoint import (
    atomic_write_json,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from .data.datasets import dataset_size
from .distributed import (
    all_gather_objects,
    all_reduce_sum,
    barrier,
    default_device,
    derive_seed,
    get_rank,
    get_world_size,
    is_main_process,
    shard_indices,
)
from .errors import (
    CheckpointError,
    DatasetError,
    DeviceError,
    EmptyDatasetError,
    OutputPathError,
    RunExistsError,
    TrainConfigError,
    TrainingError,
)
from .model import PromptedViT, unwrap_model
from .run_lock import RunLock
from .weights_io import backbone_fingerprint

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
SUMMARY_FILE = "summary.json"
BEST_DIR = "best"
LAST_DIR = "last"
RUN_FILES = (STATE_FILE, SUMMARY_FILE, BEST_DIR, LAST_DIR)
"""What a run folder holds; a new run into a folder with any of them needs ``resume`` or ``overwrite``."""
STATE_VERSION = 1
# TrainConfig fields that may change between a run and its resumption without changing the result.
_RESUME_FREE = ("num_workers", "progress", "device", "eval_batch_size")


@dataclass
class TrainConfig:
    """Training recipe. Defaults follow the paper and the authors' scripts.

    The paper: 100 epochs, AdamW, cosine annealing. Scripts: 10 warm-up epochs, 10 epochs of random
    prompt selection, pool-loss weight 0.01. The learning rate (searched per dataset by the authors) and
    weight decay are our defaults for AdamW prompt tuning.
    ``batch_size`` is the global batch (divided over the processes under ``torchrun``).
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    warmup_epochs: float = 10.0
    betas: tuple[float, float] = (0.9, 0.999)
    pool_loss_weight: float = 0.01
    random_epochs: int = 10
    mixup_alpha: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    num_workers: int = 0
    eval_batch_size: int | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        low, high = self.betas
        self.betas = (float(low), float(high))
        self.validate()

    def validate(self) -> None:
        """Raise TrainConfigError for values that cannot work."""
        for name in ("epochs", "batch_size", "random_epochs", "seed", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TrainConfigError(f"{name} must be a whole number, got {value!r}.")
        for name in ("lr", "min_lr", "weight_decay", "warmup_epochs", "pool_loss_weight", "mixup_alpha",
                     "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise TrainConfigError(f"{name} must be a finite number, got {value!r}.")
        if self.grad_clip is not None and not math.isfinite(self.grad_clip):
            raise TrainConfigError(f"grad_clip must be a finite number or None, got {self.grad_clip!r}.")
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.random_epochs >= 0, f"random_epochs must be >= 0, got {self.random_epochs}"),
            (self.pool_loss_weight >= 0, f"pool_loss_weight must be >= 0, got {self.pool_loss_weight}"),
            (self.mixup_alpha >= 0, f"mixup_alpha must be >= 0 (0 disables mixup), got {self.mixup_alpha}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or None, got {self.grad_clip}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (self.eval_batch_size is None or self.eval_batch_size >= 1,
             f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainConfigError(message + ".")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the fields."""
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class EvalResult:
    """Accuracy (fraction in [0, 1]), mean cross-entropy, sample count and optional predictions
    (``[N]`` class indices in dataset order)."""

    accuracy: float
    loss: float
    num_samples: int
    predictions: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The scalar fields (no predictions)."""
        return {"accuracy": self.accuracy, "loss": self.loss, "num_samples": self.num_samples}


# ------------------------------------------------------------------------------------------ schedule
def lr_at_step(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up from ``base_lr / warmup_steps``
    to ``base_lr`` over ``warmup_steps`` steps, then cosine decay to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Warm-up length in steps (capped so that at least one step of decay remains)."""
    total = cfg.epochs * steps_per_epoch
    return min(round(cfg.warmup_epochs * steps_per_epoch), max(0, total - 1))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> AdamW:
    """AdamW over the trainable parameters only; biases and other 1-D parameters get no weight decay."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise TrainConfigError("The model has no trainable parameters; nothing to train.")
    decay = [p for _, p in named if p.ndim > 1]
    no_decay = [p for _, p in named if p.ndim <= 1]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """Per-step warm-up + cosine schedule (:func:`lr_at_step`) as a ``LambdaLR`` (call ``step()`` per batch)."""
    total = cfg.epochs * steps_per_epoch
    warmup = warmup_steps_for(cfg, steps_per_epoch)
    return LambdaLR(optimizer, lambda step: lr_at_step(step, total, warmup, cfg.lr, cfg.min_lr) / cfg.lr)


# ------------------------------------------------------------------------------------------ helpers
def _check_dataset(dataset: Any, what: str) -> int:
    if not isinstance(dataset, Sized):
        raise DatasetError(f"The {what} dataset has no length; pass a map-style dataset (with __len__).")
    n = len(dataset)
    if n == 0:
        raise EmptyDatasetError(
            f"The {what} dataset is empty (0 samples); check --data-root, the dataset name and the split."
        )
    return n


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DatasetError(
            f"Label {high if high >= num_classes else low} is outside [0, {num_classes}): the dataset has "
            f"more classes than the model's head (num_classes={num_classes}); build the model with the "
            "dataset's number of classes."
        )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise TrainConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, list | tuple) or len(batch) < 2:
        raise DatasetError("Dataset items must be (image, label) pairs.")
    images, labels = batch[0], batch[1]
    return images, torch.as_tensor(labels).long()


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> this process's GPU when available, else CPU; anything else as given (a bare
    ``"cuda"`` gets the current device's index).

    Raises DeviceError for a string torch does not know, a device type other than cpu/cuda/mps, or a
    device this machine does not have (``cuda`` without a GPU, ``cuda:3`` on a two-GPU machine).
    """
    text = str(device)
    if text == "auto":
        return _with_cuda_index(default_device())
    hint = "use --device auto, cpu, cuda, cuda:N or mps"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DeviceError(f"Unknown device {text!r}; {hint}.") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"Device {text!r} was asked for but this machine has no usable CUDA GPU; use "
                              "--device cpu (or auto, which picks a GPU only when there is one).")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"Device {text!r} does not exist: this machine has {count} CUDA GPU(s), "
                              f"cuda:0 to cuda:{count - 1}.")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"Device {text!r} (Apple GPU) is not available here; use --device cpu or auto.")
    elif resolved.type != "cpu":
        raise DeviceError(f"Device type {resolved.type!r} is not supported; {hint}.")
    return _with_cuda_index(resolved)


def _with_cuda_index(resolved: torch.device) -> torch.device:
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return resolved


def _count_classes(dataset: Dataset) -> int | None:
    """Number of distinct labels of a dataset that lists its ``targets`` (also through ``Subset``),
    without decoding an image; None when it does not."""
    if isinstance(dataset, Subset):
        targets = getattr(dataset.dataset, "targets", None)
        if targets is None:
            return None
        return len({int(targets[i]) for i in dataset.indices})
    targets = getattr(dataset, "targets", None)
    return None if targets is None else len({int(t) for t in targets})


def check_classes(num_classes: int, train_set: Dataset) -> None:
    """Refuse a classification task with fewer than two classes (it would train to a meaningless 100 %)."""
    if num_classes < 2:
        raise DatasetError(
            f"The task has {num_classes} class(es); a classifier needs at least two. Check --dataset and "
            "--data-root (an image folder needs one sub-folder per class)."
        )
    seen = _count_classes(train_set)
    if seen is not None and seen < 2:
        raise DatasetError(
            f"The training split has images of only {seen} class(es) out of {num_classes}; add images of the "
            "other classes (or raise --max-samples)."
        )


def describe_run(out_dir: str | Path) -> str | None:
    """One phrase describing the run saved in ``out_dir`` (files, epochs, accuracy), None when empty."""
    out = Path(out_dir)
    present = [f"{name}/" if (out / name).is_dir() else name for name in RUN_FILES if (out / name).exists()]
    if not present:
        return None
    try:
        info = json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        info = {}
    if isinstance(info, dict) and info.get("epochs"):
        state = "finished" if info.get("finished") else "unfinished"
        acc = info.get("best_val_acc")
        acc_text = f", best val accuracy {100 * acc:.2f}%" if isinstance(acc, int | float) else ""
        what = (f"a {state} {info.get('method', '?')} run ({info.get('epochs_done', '?')}/{info['epochs']} "
                f"epochs{acc_text})")
    else:
        what = "a run"
    return f"{what} in {', '.join(present)}"


def check_run_folder(out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to start a new run in a folder that already holds one (unless ``resume`` or ``overwrite``),
    and an ``out_dir`` that is a file or cannot be written. Cheap: call it before any expensive work."""
    out = Path(out_dir).expanduser()
    check_writable_folder(out, "--out")
    existing = describe_run(out)
    if existing is None or resume or overwrite:
        return
    raise RunExistsError(
        f"{out} already holds {existing}; a new run would replace them. Pass --resume to continue (or reuse) "
        "it, --force to replace it, or another --out folder."
    )


def check_writable_folder(folder: str | Path, option: str = "--out") -> None:
    """Raise OutputPathError when ``folder`` is a file or neither it nor its nearest existing parent can be
    written (checked by creating and removing a temporary file there, which also catches read-only file
    systems and folders only root could write)."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} {path} is a file; {option} needs a folder (pass a folder path).")
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(f"{option} {path} cannot be created: {probe} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise OutputPathError(f"{option} {path} cannot be written ({exc.strerror or exc} in {probe}); pass a folder "
                              "you can write to.") from exc


def _clear_run(out: Path) -> None:
    for name in RUN_FILES:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))


def _mixup(images: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float, smoothing: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    targets = F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + smoothing / num_classes
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(images.shape[0], device=images.device)
    return lam * images + (1 - lam) * images[perm], lam * targets + (1 - lam) * targets[perm]


# ------------------------------------------------------------------------------------------ evaluation
def _sharded_batches(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
                     desc: str, progress: bool) -> tuple[list[int], Any]:
    indices = list(shard_indices(dataset_size(dataset)))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not (progress and is_main_process()))
    return indices, bar


def _gather_ordered(indices: list[int], values: list[torch.Tensor], total: int) -> torch.Tensor:
    """Put per-rank results back in dataset order."""
    local = torch.cat(values) if values else torch.empty(0)
    parts = all_gather_objects((indices, local))
    chunks = [(idx, val) for idx, val in parts if len(idx)]
    out = torch.empty((total, *chunks[0][1].shape[1:]), dtype=chunks[0][1].dtype)
    for idx, val in chunks:
        out[torch.as_tensor(idx)] = val
    return out


class _EvalMode:
    """Eval mode with deterministic (top-k) prompt selection, restored afterwards."""

    def __init__(self, model: PromptedViT) -> None:
        self.model = model
        self.was_training = model.training
        self.was_random = model.random_selection

    def __enter__(self) -> PromptedViT:
        self.model.eval()
        self.model.random_selection = False
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)
        self.model.random_selection = self.was_random


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    *,
    device: str | torch.device | None = None,
    return_predictions: bool = False,
    num_workers: int = 0,
    progress: bool = False,
) -> EvalResult:
    """Accuracy and mean cross-entropy of ``model`` on ``dataset`` (prompt selection always top-k).

    Under ``torchrun`` every process evaluates a disjoint, pad-free shard and the counts are summed, so
    the result counts each sample exactly once whatever the world size.
    """
    total = _check_dataset(dataset, "evaluation")
    _check_batch_size(batch_size)
    inner = unwrap_model(model)
    device = torch.device(device) if device is not None else next(inner.parameters()).device
    loss_sum, correct, preds = 0.0, 0, []
    with _EvalMode(inner):
        indices, batches = _sharded_batches(dataset, batch_size, num_workers, device, "eval", progress)
        for batch in batches:
            images, labels = _split_batch(batch)
            _check_labels(labels, inner.num_classes)
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            logits = inner(images)
            loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            pred = logits.argmax(dim=-1)
            correct += int((pred == labels).sum())
            if return_predictions:
                preds.append(pred.cpu())
    loss_sum, correct_total, count = all_reduce_sum([loss_sum, correct, len(indices)])
    predictions = _gather_ordered(indices, preds, total) if return_predictions else None
    return EvalResult(accuracy=correct_total / count, loss=loss_sum / count, num_samples=int(count),
                      predictions=predictions)


@torch.no_grad()
def extract_features(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int = 256,
    *,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[N, D]`` and labels ``[N]`` of the whole dataset of ``(image, label)`` pairs, in dataset order.

    ``model``: a ``PromptedViT`` (or its DDP wrapper): its pre-logits ``forward_features``, in eval mode with
    top-k prompt selection; or any callable mapping images ``[B, C, H, W]`` to ``[B, ...]`` (flattened to
    ``[B, D]``), run as given on ``device`` (default CPU). Under ``torchrun`` each process runs a shard and
    every process receives the full result.
    """
    total = _check_dataset(dataset, "feature")
    _check_batch_size(batch_size)
    if isinstance(model, nn.Module):
        inner = unwrap_model(model)
        where = torch.device(device) if device is not None else next(inner.parameters()).device
        with _EvalMode(inner):
            return _features(inner.forward_features, dataset, total, batch_size, num_workers, where, progress)
    where = torch.device(device) if device is not None else torch.device("cpu")
    return _features(model, dataset, total, batch_size, num_workers, where, progress)


def _features(feature_fn: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, total: int, batch_size: int,
              num_workers: int, device: torch.device, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels_out = [], []
    indices, batches = _sharded_batches(dataset, batch_size, num_workers, device, "features", progress)
    for batch in batches:
        images, labels = _split_batch(batch)
        out = feature_fn(images.to(device, non_blocking=True))
        feats.append(out.detach().float().cpu().reshape(out.shape[0], -1))
        labels_out.append(labels.cpu())
    return _gather_ordered(indices, feats, total), _gather_ordered(indices, labels_out, total)


# ------------------------------------------------------------------------------------------ training
def _run_identity(model: PromptedViT, cfg: TrainConfig, fingerprint: str, num_train: int, num_val: int,
                  meta: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a saved state to be resumed (or reused as finished)."""
    train_cfg = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE}
    return {
        "train_config": train_cfg,
        "prompt_config": model.config.to_dict(),
        "backbone_fingerprint": fingerprint,
        "num_classes": int(model.num_classes),
        "num_train": num_train,
        "num_val": num_val,
        "dataset": meta.get("dataset"),
        "world_size": get_world_size(),
    }


def _identity_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                      if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


ResumeStatus = Literal["none", "resumable", "finished", "incompatible"]


def resume_status(out_dir: str | Path, model: nn.Module, train_set: Dataset, val_set: Dataset | None,
                  cfg: TrainConfig, meta: dict[str, Any] | None = None) -> ResumeStatus:
    """What ``train(..., resume=True)`` would do with ``out_dir``: start from scratch (``none``), continue
    (``resumable``), return at once (``finished``) or refuse because the saved run differs
    (``incompatible``; also for an unreadable state)."""
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return "none"
    try:
        state = load_training_state(path)
    except CheckpointError:
        return "incompatible"
    inner = unwrap_model(model)
    identity = _run_identity(inner, cfg, backbone_fingerprint(inner.backbone), dataset_size(train_set),
                             dataset_size(val_set) if val_set is not None else 0, dict(meta or {}))
    if state.get("version") != STATE_VERSION or _identity_diff(state.get("identity", {}), identity):
        return "incompatible"
    return "finished" if int(state["epoch"]) >= cfg.epochs else "resumable"


def resume_differences(out_dir: str | Path, model: nn.Module, train_set: Dataset, val_set: Dataset | None,
                       cfg: TrainConfig, meta: dict[str, Any] | None = None) -> list[str]:
    """What differs between the run saved in ``out_dir`` and this one (``"key: saved -> now"`` items; empty
    when they match or nothing is saved)."""
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return []
    try:
        state = load_training_state(path)
    except CheckpointError:
        return ["the training state is unreadable"]
    inner = unwrap_model(model)
    identity = _run_identity(inner, cfg, backbone_fingerprint(inner.backbone), dataset_size(train_set),
                             dataset_size(val_set) if val_set is not None else 0, dict(meta or {}))
    if state.get("version") != STATE_VERSION:
        return ["state file version"]
    return _identity_diff(state.get("identity", {}), identity)


def _train_one_epoch(net: nn.Module, inner: PromptedViT, loader: DataLoader, optimizer: torch.optim.Optimizer,
                     scheduler: LambdaLR, cfg: TrainConfig, device: torch.device, epoch: int) -> dict[str, float]:
    net.train()
    params = [p for p in inner.parameters() if p.requires_grad]
    loss_sum, correct, count = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
               disable=not (cfg.progress and is_main_process()))
    for step, batch in enumerate(bar):
        images, labels = _split_batch(batch)
        _check_labels(labels, inner.num_classes)
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        if cfg.mixup_alpha > 0:
            inputs, targets = _mixup(images, labels, inner.num_classes, cfg.mixup_alpha, cfg.label_smoothing)
            logits, pool_loss = net(inputs, return_pool_loss=True)
            ce = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits, pool_loss = net(images, return_pool_loss=True)
            ce = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
        loss = ce + cfg.pool_loss_weight * pool_loss
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(
                f"The loss became {value} at epoch {epoch + 1}, step {step + 1}; lower --lr or enable "
                "gradient clipping (grad_clip)."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        n = labels.shape[0]
        loss_sum += value * n
        correct += int((logits.argmax(dim=-1) == labels).sum())
        count += n
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    loss_total, correct_total, count_total = all_reduce_sum([loss_sum, correct, count])
    return {"train_loss": loss_total / count_total, "train_acc": correct_total / count_total,
            "lr": optimizer.param_groups[0]["lr"]}


def _summary(out: Path, cfg: TrainConfig, model: PromptedViT, history: list[dict[str, Any]],
             best: dict[str, Any], num_train: int, num_val: int, steps_per_epoch: int) -> dict[str, Any]:
    train_times = [h["train_seconds"] for h in history]
    return {
        "finished": len(history) >= cfg.epochs,
        "epochs_done": len(history),
        "epochs": cfg.epochs,
        "best_epoch": best.get("epoch"),
        "best_val_acc": best.get("val_acc"),
        "best_checkpoint": str(out / BEST_DIR),
        "last_checkpoint": str(out / LAST_DIR),
        "seconds_per_epoch": sum(train_times) / len(train_times) if train_times else None,
        "total_train_seconds": sum(train_times),
        "num_train": num_train,
        "num_val": num_val,
        "steps_per_epoch": steps_per_epoch,
        "world_size": get_world_size(),
        "method": model.config.method,
        "train_config": cfg.to_dict(),
        "prompt_config": model.config.to_dict(),
        "history": history,
    }


def train(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None,
    cfg: TrainConfig | None = None,
    out_dir: str | Path = "runs/train",
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prompt-tune ``model`` (a ``PromptedViT``) on ``train_set``, selecting by accuracy on ``val_set``.

    Args:
        model: trained in place (it ends with the last epoch's weights; the best are in ``out_dir/best``).
        train_set, val_set: map-style datasets of ``(image tensor, label)``; ``val_set=None`` keeps the
            last epoch as "best" (no model selection).
        cfg: the recipe (:class:`TrainConfig`).
        out_dir: receives ``best/``, ``last/``, ``train_state.pt`` and ``summary.json``.
        resume: continue from ``out_dir/train_state.pt`` when it exists (a finished run returns at once);
            a state from a different configuration raises CheckpointError.
        meta: stored in every checkpoint's JSON (``class_names``, ``dataset``, ``backbone_source``, ...).
        on_epoch_end: called on rank 0 with each epoch's history record.
        overwrite: replace a run already saved in ``out_dir`` (its ``best/``, ``last/``, state and summary
            are deleted first). Without it (and without ``resume``) such a folder raises RunExistsError.

    Rank 0 holds a :class:`~tcpa_core.run_lock.RunLock` on ``out_dir`` for the whole run, so a second writer
    is refused (RunLockedError) instead of interleaving its files with this run's.

    Returns the summary (also written to ``out_dir/summary.json``): history of train loss/accuracy,
    validation accuracy/loss, learning rate and seconds per epoch, best epoch and accuracy.
    """
    cfg = cfg or TrainConfig()
    cfg.validate()
    resolve_device(cfg.device)
    check_classes(int(unwrap_model(model).num_classes), train_set)
    out = Path(out_dir)
    check_run_folder(out, resume=resume, overwrite=overwrite)
    lock = RunLock(out) if is_main_process() else contextlib.nullcontext()
    with lock:
        check_run_folder(out, resume=resume, overwrite=overwrite)  # again, now that nobody else writes
        if overwrite and not resume and is_main_process():
            replaced = describe_run(out)
            if replaced:
                logger.info("replacing %s in %s", replaced, out)
                _clear_run(out)
        barrier()
        return _train(model, train_set, val_set, cfg, out, resume, meta, on_epoch_end)


def _train(model: nn.Module, train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig, out: Path,
           resume: bool, meta: dict[str, Any] | None,
           on_epoch_end: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    num_train = _check_dataset(train_set, "training")
    num_val = _check_dataset(val_set, "validation") if val_set is not None else 0
    world, rank = get_world_size(), get_rank()
    if cfg.batch_size % world:
        raise TrainConfigError(
            f"batch_size={cfg.batch_size} (the global batch) must be divisible by the {world} processes."
        )
    device = resolve_device(cfg.device)
    inner = unwrap_model(model).to(device)
    meta = dict(meta or {})
    classes = getattr(train_set, "classes", None)
    if meta.get("class_names") is None and classes is not None:
        meta["class_names"] = list(classes)
    fingerprint = backbone_fingerprint(inner.backbone)
    identity = _run_identity(inner, cfg, fingerprint, num_train, num_val, meta)

    optimizer = build_optimizer(inner, cfg)
    sampler: DistributedSampler[Any] = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                                          seed=cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size // world, sampler=sampler,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)

    best: dict[str, Any] = {"epoch": None, "val_acc": None}
    start_epoch, history = 0, []
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        state = load_training_state(state_path)
        diffs = _identity_diff(state.get("identity", {}), identity) if state.get("version") == STATE_VERSION \
            else ["state file version"]
        if diffs:
            raise CheckpointError(
                f"Cannot resume from {state_path}: it belongs to a different run ({'; '.join(diffs[:4])}). "
                "Use another --out directory or train without --resume to start over."
            )
        inner.load_trainable_state_dict({k: v.to(device) for k, v in state["trainable"].items()})
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = int(state["epoch"]), list(state["history"]), dict(state["best"])
        if is_main_process() and start_epoch >= cfg.epochs:
            logger.info("%s holds a finished run of %d epochs; nothing to train", out, cfg.epochs)
        elif is_main_process():
            logger.info("resuming %s after epoch %d/%d", out, start_epoch, cfg.epochs)
    elif resume and is_main_process():
        logger.info("no training state in %s; starting from scratch", out)

    net: nn.Module = inner
    if world > 1:
        net = DistributedDataParallel(
            inner, device_ids=[device.index] if device.type == "cuda" else None,
            # Without a CLS token the CLS pool is never used, so its parameters get no gradient.
            find_unused_parameters=getattr(inner.backbone, "cls_token", None) is None,
        )
    eval_batch = cfg.eval_batch_size or 2 * cfg.batch_size // world
    for epoch in range(start_epoch, cfg.epochs):
        _seed_all(derive_seed(cfg.seed, "epoch", epoch, rank))
        sampler.set_epoch(epoch)
        inner.random_selection = epoch < cfg.random_epochs
        started = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch + 1, "random_selection": inner.random_selection}
        record.update(_train_one_epoch(net, inner, loader, optimizer, scheduler, cfg, device, epoch))
        record["train_seconds"] = time.perf_counter() - started
        inner.random_selection = False
        started = time.perf_counter()
        if val_set is not None:
            result = evaluate(inner, val_set, eval_batch, device=device, num_workers=cfg.num_workers,
                              progress=cfg.progress)
            record.update(val_acc=result.accuracy, val_loss=result.loss)
        record["eval_seconds"] = time.perf_counter() - started
        history.append(record)
        val_acc = record.get("val_acc")
        improved = val_acc is None or best["val_acc"] is None or val_acc > best["val_acc"]
        if improved:
            best = {"epoch": epoch + 1, "val_acc": val_acc}
        if is_main_process():
            ckpt_meta = {**meta, "epoch": epoch + 1, "metrics": {k: v for k, v in record.items() if k != "epoch"},
                         "best": best}
            if improved:
                save_checkpoint(inner, out / BEST_DIR, ckpt_meta, fingerprint=fingerprint)
            save_checkpoint(inner, out / LAST_DIR, ckpt_meta, fingerprint=fingerprint)
            save_training_state(state_path, {
                "version": STATE_VERSION,
                "identity": identity,
                "epoch": epoch + 1,
                "trainable": {k: v.detach().cpu().clone() for k, v in inner.trainable_state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "best": best,
            })
            atomic_write_json(out / SUMMARY_FILE,
                              _summary(out, cfg, inner, history, best, num_train, num_val, steps_per_epoch))
            acc = f"{100 * val_acc:.2f}%" if val_acc is not None else "n/a"
            logger.info("epoch %d/%d: train loss %.4f, val acc %s (best epoch %s), %.1f s",
                        epoch + 1, cfg.epochs, record["train_loss"], acc, best["epoch"], record["train_seconds"])
            if on_epoch_end is not None:
                on_epoch_end(record)
        barrier()
    summary = _summary(out, cfg, inner, history, best, num_train, num_val, steps_per_epoch)
    if is_main_process():
        atomic_write_json(out / SUMMARY_FILE, summary)
    barrier()
    return summary


__all__ = [
    "RUN_FILES", "EvalResult", "TrainConfig", "TrainConfigError", "TrainingError", "build_optimizer",
    "build_scheduler", "check_classes", "check_run_folder", "check_writable_folder", "describe_run", "evaluate",
    "extract_features", "lr_at_step", "resolve_device", "resume_differences", "resume_status", "train",
    "warmup_steps_for",
]
