"""Compare prompting methods on the same data and backbone (``tcpa-viz compare``).

Protocol, per method:

1. seed ``seeds[0]``: train once per learning rate of the grid; the run with the highest best-epoch
   validation accuracy gives the method's learning rate (ties: the smaller learning rate);
2. the other seeds: train at that learning rate;
3. test accuracy is evaluated for the chosen learning rate only (every seed), from each run's ``best/``
   checkpoint (selected on validation), and the per-image correctness is kept (``test_result.json``) so
   that two methods can be compared with a paired bootstrap over test images (:mod:`tcpa_viz.bootstrap`).

Every run is a ``tcpa_core.train.train`` run folder ``<out>/runs/<method>/lr<lr>_seed<seed>/``, written
atomically after each epoch; a finished run with the same configuration is reused without training, an
interrupted one is resumed, one with a different configuration is an error unless ``force``. The output
folder and each run folder are locked (:class:`tcpa_core.run_lock.RunLock`) while they are written.

Outputs: ``compare.csv`` (one row per run: :data:`CSV_COLUMNS` then bookkeeping columns),
``compare_summary.json`` and ``compare_summary.md`` (mean ± std over seeds per method, the paired bootstrap
intervals of :data:`PAIRS`, the Table 3 chains of :data:`TABLE3_CHAINS`).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from tcpa_core.checkpoint import atomic_write, atomic_write_json, read_checkpoint
from tcpa_core.config import PromptConfig
from tcpa_core.distributed import derive_seed, is_main_process
from tcpa_core.errors import RunExistsError, TCPAError
from tcpa_core.methods import get_method, list_methods
from tcpa_core.model import PromptedViT
from tcpa_core.run_lock import RunLock
from tcpa_core.train import (
    BEST_DIR,
    SUMMARY_FILE,
    TrainConfig,
    check_writable_folder,
    evaluate,
    resume_differences,
    resume_status,
    train,
)

from .bootstrap import paired_bootstrap_ci

logger = logging.getLogger(__name__)

COMPARE_CSV = "compare.csv"
SUMMARY_JSON = "compare_summary.json"
SUMMARY_MD = "compare_summary.md"
RUNS_SUBDIR = "runs"
TEST_RESULT = "test_result.json"

CSV_COLUMNS = ("method", "seed", "lr", "val_acc", "test_acc", "seconds_per_epoch", "trainable_params")
"""The columns every ``compare.csv`` starts with (``test_acc`` is empty for learning rates not chosen)."""
EXTRA_COLUMNS = ("display_name", "selected", "grid", "best_epoch", "epochs", "run_dir")

DEFAULT_METHODS = ("vp", "vpt-shallow", "vpt-deep", "vfpt", "r-tcpa", "tcpa", "vfpt+tcpa", "vp+tcpa")
DEFAULT_LRS = (1e-3, 5e-3, 2e-2)

PAIRS: tuple[tuple[str, str], ...] = (
    ("r-tcpa", "vpt-deep"),
    ("tcpa", "vpt-deep"),
    ("tcpa", "r-tcpa"),
    ("vfpt+tcpa", "vfpt"),
    ("vp+tcpa", "vp"),
)
"""``(with TCPA, its base)`` pairs that get a paired bootstrap interval of the test-accuracy difference:
each "+TCPA" method against the method it is added to (TCPA and R-TCPA replace VPT-deep's prompts), and
TCPA against R-TCPA (the effect of token matching alone)."""

TABLE3_CHAINS: tuple[tuple[str, ...], ...] = (("vpt-deep", "r-tcpa", "tcpa"), ("vfpt", "vfpt+tcpa"), ("vp", "vp+tcpa"))
"""Rows of the paper's Table 3 style ablation: each chain adds one ingredient to the previous method."""



class CompareError(TCPAError, ValueError):
    """A comparison that cannot run as asked (unknown method, empty grid, repeated seed, ...)."""


def method_names() -> tuple[str, ...]:
    """Every method ``compare`` accepts: the method registry, in its order."""
    return tuple(list_methods())


def display_name(method: str) -> str:
    """Human name of a registered method (``"vfpt+tcpa"`` -> ``"VFPT+TCPA"``); other names unchanged."""
    return get_method(method).display_name if method in list_methods() else method


def method_role(method: str) -> str:
    """``"tcpa"`` for the TCPA family (prompt pools), ``"baseline"`` for the others (registry ``role``)."""
    return get_method(method).role if method in list_methods() else "baseline"


def method_prompt_config(method: str, overrides: Mapping[str, Any] | None = None) -> PromptConfig:
    """The :class:`PromptConfig` of ``method`` with the shared size ``overrides`` (pool sizes, top-k, prompt
    counts, dropout...; fields a method does not use are ignored by it)."""
    if method not in method_names():
        raise CompareError(f"Unknown method {method!r}; choose from {', '.join(method_names())}.")
    return PromptConfig(**{**dict(overrides or {}), "method": method})


@dataclass
class CompareConfig:
    """What to compare and how.

    ``train`` is the shared recipe; its ``lr`` and ``seed`` are replaced by each grid point and seed.
    ``seeds[0]`` is the seed of the learning-rate selection.
    """

    methods: Sequence[str] = DEFAULT_METHODS
    seeds: Sequence[int] = (0, 1, 2)
    lrs: Sequence[float] = DEFAULT_LRS
    train: TrainConfig = field(default_factory=TrainConfig)
    prompt: Mapping[str, Any] = field(default_factory=dict)
    bootstrap_samples: int = 10_000
    confidence: float = 0.95
    force: bool = False

    def __post_init__(self) -> None:
        self.methods, self.seeds = list(self.methods), [int(s) for s in self.seeds]
        self.lrs = sorted(float(lr) for lr in self.lrs)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`CompareError` for a comparison that cannot run."""
        unknown = [m for m in self.methods if m not in method_names()]
        checks = [
            (bool(self.methods), "give at least one method"),
            (not unknown, f"unknown method(s) {unknown}; choose from {', '.join(method_names())}"),
            (len(set(self.methods)) == len(self.methods), f"methods are repeated: {self.methods}"),
            (bool(self.seeds), "give at least one seed"),
            (len(set(self.seeds)) == len(self.seeds), f"seeds are repeated: {self.seeds}"),
            (bool(self.lrs), "give at least one learning rate"),
            (all(lr > 0 and math.isfinite(lr) for lr in self.lrs), f"learning rates must be > 0, got {self.lrs}"),
            (len(set(self.lrs)) == len(self.lrs), f"learning rates are repeated: {self.lrs}"),
            (self.bootstrap_samples >= 1, f"bootstrap samples must be >= 1, got {self.bootstrap_samples}"),
            (0 < self.confidence < 1, f"confidence must be in (0, 1), got {self.confidence}"),
        ]
        for ok, message in checks:
            if not ok:
                raise CompareError(message + ".")
        for method in self.methods:
            method_prompt_config(method, self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "seeds": list(self.seeds), "lrs": list(self.lrs),
                "train": self.train.to_dict(), "prompt": dict(self.prompt),
                "bootstrap_samples": self.bootstrap_samples, "confidence": self.confidence}


@dataclass
class CompareData:
    """The three splits shared by every method (``train`` already carries its training transform) and the
    metadata stored in every checkpoint (``dataset``, ``class_names``, ``backbone_source``)."""

    train: Dataset
    val: Dataset
    test: Dataset
    meta: Mapping[str, Any] = field(default_factory=dict)


ModelFactory = Callable[[PromptConfig], PromptedViT]
"""Builds a fresh ``PromptedViT`` on the shared backbone for a prompt configuration."""


@dataclass
class RunRecord:
    """One training run (a method, a seed, a learning rate); accuracies are fractions in [0, 1]."""

    method: str
    seed: int
    lr: float
    val_acc: float
    test_acc: float | None
    seconds_per_epoch: float
    trainable_params: int
    best_epoch: int
    epochs: int
    run_dir: Path
    selected: bool = False
    grid: bool = False
    trained: bool = True
    correct: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, "lr": self.lr, "val_acc": self.val_acc,
                "test_acc": self.test_acc, "seconds_per_epoch": self.seconds_per_epoch,
                "trainable_params": self.trainable_params, "display_name": display_name(self.method),
                "selected": self.selected, "grid": self.grid, "best_epoch": self.best_epoch, "epochs": self.epochs,
                "run_dir": str(self.run_dir)}


def run_dir_for(out_dir: str | Path, method: str, lr: float, seed: int) -> Path:
    """Folder of one run: ``<out>/runs/<method>/lr<lr>_seed<seed>``."""
    return Path(out_dir) / RUNS_SUBDIR / method / f"lr{lr:g}_seed{seed}"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _labels(data: Dataset) -> np.ndarray:
    from .figures.common import labels_of

    return labels_of(data)


class Comparison:
    """Runs the protocol of the module docstring; :meth:`run` returns every :class:`RunRecord`.

    Args:
        factory: builds a model for a prompt configuration (same backbone for every call).
        data: the shared splits.
        config: the comparison.
        out_dir: receives ``runs/``, ``compare.csv`` and the summaries.
        log: receives one line per step (default: the module logger).
    """

    def __init__(self, factory: ModelFactory, data: CompareData, config: CompareConfig, out_dir: str | Path,
                 log: Callable[[str], None] | None = None) -> None:
        self.factory, self.data, self.config, self.out = factory, data, config, Path(out_dir)
        self.log = log or logger.info
        self._test_labels: np.ndarray | None = None

    # ---------------------------------------------------------------------------------------- one run
    def _train_run(self, method: str, lr: float, seed: int) -> tuple[RunRecord, PromptedViT]:
        cfg = replace(self.config.train, lr=lr, seed=seed, min_lr=min(self.config.train.min_lr, lr))
        torch.manual_seed(derive_seed(seed, "init"))
        model = self.factory(method_prompt_config(method, self.config.prompt))
        run_dir = run_dir_for(self.out, method, lr, seed)
        meta = dict(self.data.meta)
        status = resume_status(run_dir, model, self.data.train, self.data.val, cfg, meta)
        name = f"[{method} lr={lr:g} seed={seed}]"
        trained = not (status == "finished" and not self.config.force)
        if not trained:
            self.log(f"{name} reusing the finished run in {run_dir} (same configuration, no training)")
            summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        else:
            if status == "incompatible" and not self.config.force:
                diffs = resume_differences(run_dir, model, self.data.train, self.data.val, cfg, meta)
                raise RunExistsError(
                    f"{run_dir} holds a run with another configuration ({'; '.join(diffs[:4]) or 'unreadable state'}"
                    "); pass --force to retrain it, or use another --out folder."
                )
            resume = status == "resumable" and not self.config.force
            self.log(f"{name} {'resuming' if resume else 'training'} {cfg.epochs} epochs -> {run_dir}")
            summary = train(model, self.data.train, self.data.val, cfg, run_dir, resume=resume, meta=meta,
                            overwrite=self.config.force)
        record = RunRecord(
            method=method, seed=seed, lr=lr, val_acc=float(summary["best_val_acc"]), test_acc=None,
            seconds_per_epoch=float(summary["seconds_per_epoch"]),
            trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            best_epoch=int(summary["best_epoch"]), epochs=int(summary["epochs"]), run_dir=run_dir, trained=trained,
        )
        return record, model

    def _test(self, record: RunRecord, model: PromptedViT) -> None:
        """Test accuracy and per-image correctness of ``record``'s best checkpoint (cached in the run folder,
        keyed by the checkpoint's digest)."""
        weights = record.run_dir / BEST_DIR / "model.safetensors"
        digest = _file_digest(weights)
        cache = record.run_dir / TEST_RESULT
        n = len(cast(Sized, self.data.test))
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("checkpoint_sha256") == digest and saved.get("num_samples") == n:
                record.test_acc, record.correct = float(saved["accuracy"]), np.asarray(saved["correct"], dtype=bool)
                return
        if self._test_labels is None:
            self._test_labels = _labels(self.data.test)
        tensors, _ = read_checkpoint(weights)
        device = next(model.parameters()).device
        model.load_trainable_state_dict({k: v.to(device) for k, v in tensors.items()})
        result = evaluate(model, self.data.test, batch_size=2 * self.config.train.batch_size, return_predictions=True,
                          num_workers=self.config.train.num_workers)
        assert result.predictions is not None
        predictions = result.predictions.numpy()
        correct = predictions == self._test_labels
        record.test_acc, record.correct = float(correct.mean()), correct
        if is_main_process():
            atomic_write_json(cache, {"split": "test", "checkpoint_sha256": digest, "num_samples": n,
                                      "accuracy": record.test_acc, "predictions": predictions.tolist(),
                                      "labels": self._test_labels.tolist(), "correct": correct.astype(int).tolist()})

    @staticmethod
    def _lock(folder: Path) -> Any:
        return RunLock(folder) if is_main_process() else contextlib.nullcontext()

    def _locked_run(self, method: str, lr: float, seed: int, test: bool) -> tuple[RunRecord, PromptedViT]:
        """One run (and its test evaluation when ``test``) while holding the lock of its folder."""
        with self._lock(run_dir_for(self.out, method, lr, seed)):
            record, model = self._train_run(method, lr, seed)
            if test:
                record.selected = True
                self._test(record, model)
        return record, model

    # ---------------------------------------------------------------------------------------- protocol
    def run_method(self, method: str) -> list[RunRecord]:
        """Grid at ``seeds[0]``, choice on validation, the other seeds at the chosen rate, test for those."""
        first, others = self.config.seeds[0], self.config.seeds[1:]
        grid = [self._locked_run(method, lr, first, test=False) for lr in self.config.lrs]
        for record, _ in grid:
            record.grid = True
        chosen_index = max(range(len(grid)), key=lambda i: (grid[i][0].val_acc, -grid[i][0].lr))
        chosen, model = grid[chosen_index]
        chosen.selected = True
        accs = ", ".join(f"{r.lr:g}: {100 * r.val_acc:.2f}%" for r, _ in grid)
        self.log(f"[{method}] val accuracy per lr ({accs}) -> lr {chosen.lr:g}")
        with self._lock(chosen.run_dir):
            self._test(chosen, model)
        records = [r for r, _ in grid]
        for seed in others:
            record, model = self._locked_run(method, chosen.lr, seed, test=True)
            records.append(record)
        for r in records:
            if r.selected:
                self.log(f"[{method} lr={r.lr:g} seed={r.seed}] test accuracy {100 * (r.test_acc or 0):.2f}%, "
                         f"{r.seconds_per_epoch:.1f} s/epoch")
        return records

    def run(self) -> list[RunRecord]:
        """Every method in order, holding the lock of the output folder (a second comparison writing there is
        refused with RunLockedError); ``compare.csv`` and the summaries are rewritten after each method, so an
        interrupted comparison leaves the finished methods' results."""
        check_writable_folder(self.out, "--out")
        records: list[RunRecord] = []
        with self._lock(self.out):
            for method in self.config.methods:
                records += self.run_method(method)
                if is_main_process():
                    write_outputs(records, self.config, self.out)
        return records


# ------------------------------------------------------------------------------------------ outputs
def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else None


def method_summaries(records: Sequence[RunRecord]) -> dict[str, dict[str, Any]]:
    """Per method (in run order): chosen lr, the grid's validation accuracies, and mean / sample std
    (ddof 1; ``None`` for one seed) over the seeds at the chosen lr of test and validation accuracy and of
    seconds per epoch."""
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r.method for r in records):
        mine = [r for r in records if r.method == method]
        chosen = sorted((r for r in mine if r.selected), key=lambda r: r.seed)
        test_mean, test_std = _mean_std([r.test_acc or 0.0 for r in chosen])
        val_mean, val_std = _mean_std([r.val_acc for r in chosen])
        sec_mean, sec_std = _mean_std([r.seconds_per_epoch for r in chosen])
        out[method] = {
            "display_name": display_name(method), "lr": chosen[0].lr,
            "lr_grid_val_acc": {f"{r.lr:g}": r.val_acc for r in mine if r.grid},
            "seeds": [r.seed for r in chosen],
            "test_acc_mean": test_mean, "test_acc_std": test_std,
            "val_acc_mean": val_mean, "val_acc_std": val_std,
            "seconds_per_epoch_mean": sec_mean, "seconds_per_epoch_std": sec_std,
            "trainable_params": chosen[0].trainable_params,
        }
    return out


def pair_intervals(records: Sequence[RunRecord], pairs: Sequence[tuple[str, str]] = PAIRS, samples: int = 10_000,
                   confidence: float = 0.95) -> list[dict[str, Any]]:
    """Paired bootstrap interval of ``test_acc(a) - test_acc(b)`` for every pair whose two methods were run.

    Runs are paired within a seed (the seeds both methods have at their chosen lr); per image the
    difference is averaged over those seeds, then images are resampled (:func:`paired_bootstrap_ci`)."""
    chosen = {(r.method, r.seed): r for r in records if r.selected and r.correct is not None}
    rows = []
    for a, b in pairs:
        seeds = sorted({s for m, s in chosen if m == a} & {s for m, s in chosen if m == b})
        if not seeds:
            continue
        ca = np.stack([chosen[a, s].correct for s in seeds])  # type: ignore[misc]
        cb = np.stack([chosen[b, s].correct for s in seeds])  # type: ignore[misc]
        ci = paired_bootstrap_ci(ca, cb, samples=samples, confidence=confidence)
        rows.append({"a": a, "b": b, "label": f"{display_name(a)} - {display_name(b)}", "seeds": seeds,
                     "per_seed_difference": [float(x) for x in (ca.mean(axis=1) - cb.mean(axis=1))], **ci.to_dict()})
    return rows


def _pct(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as markdown tables (accuracies in %, differences in percentage points)."""
    methods, pairs = summary["methods"], summary["pairs"]
    cfg = summary["config"]
    lines = [
        f"Seeds {', '.join(map(str, cfg['seeds']))}; learning rate per method chosen on val at seed {cfg['seeds'][0]} "
        f"from {', '.join(f'{lr:g}' for lr in cfg['lrs'])}; {cfg['train']['epochs']} epochs; mean ± std (ddof 1) "
        "over seeds.", "",
        "| method | lr | val acc (%) | test acc (%) | s / epoch | trainable params |",
        "|---|---|---|---|---|---|",
    ]
    for info in methods.values():
        sec = f"{info['seconds_per_epoch_mean']:.1f}" + (
            f" ± {info['seconds_per_epoch_std']:.1f}" if info["seconds_per_epoch_std"] is not None else "")
        lines.append(f"| {info['display_name']} | {info['lr']:g} | {_pct(info['val_acc_mean'], info['val_acc_std'])} | "
                     f"{_pct(info['test_acc_mean'], info['test_acc_std'])} | {sec} | {info['trainable_params']:,} |")
    if pairs:
        level = round(100 * pairs[0]["confidence"])
        lines += ["", f"| comparison | Δ test acc (pp) | {level}% paired bootstrap CI (pp) | seeds | test images |",
                  "|---|---|---|---|---|"]
        for p in pairs:
            lines.append(f"| {p['label']} | {100 * p['difference']:+.2f} | [{100 * p['low']:+.2f}, "
                         f"{100 * p['high']:+.2f}] | {len(p['seeds'])} | {p['num_images']} |")
    chains = [c for c in summary.get("table3", []) if len(c) > 1]
    if chains:
        lines += ["", "Table 3 style (each step adds one ingredient; test acc %, mean ± std):", ""]
        for chain in chains:
            steps = [f"{methods[m]['display_name']} {_pct(methods[m]['test_acc_mean'], methods[m]['test_acc_std'])}"
                     for m in chain]
            lines.append("- " + " → ".join(steps))
    return "\n".join(lines) + "\n"


def build_summary(records: Sequence[RunRecord], config: CompareConfig) -> dict[str, Any]:
    """The JSON summary: config, per-method statistics, pair intervals, Table 3 chains present."""
    methods = method_summaries(records)
    chains = [[m for m in chain if m in methods] for chain in TABLE3_CHAINS]
    return {
        "config": config.to_dict(),
        "methods": methods,
        "pairs": pair_intervals(records, samples=config.bootstrap_samples, confidence=config.confidence),
        "table3": [c for c in chains if c],
        "bootstrap": "percentile interval over test images resampled with replacement; per image the "
                     "correctness difference is averaged over the seeds both methods share (paired within seed)",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*CSV_COLUMNS, *EXTRA_COLUMNS], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def _atomic_text(path: Path, text: str) -> None:
    def write(handle: IO[bytes]) -> None:
        handle.write(text.encode("utf-8"))

    atomic_write(path, write)


def write_outputs(records: Sequence[RunRecord], config: CompareConfig, out_dir: str | Path) -> dict[str, Path]:
    """Atomically write ``compare.csv``, ``compare_summary.json`` and ``compare_summary.md``."""
    out = Path(out_dir)
    summary = build_summary(records, config)
    paths = {"csv": out / COMPARE_CSV, "json": out / SUMMARY_JSON, "markdown": out / SUMMARY_MD}
    _atomic_text(paths["csv"], _csv_text([r.row() for r in records]))
    atomic_write_json(paths["json"], summary)
    _atomic_text(paths["markdown"], summary_markdown(summary))
    return paths


def read_compare_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``compare.csv`` with numbers parsed (empty cells -> ``None``)."""
    rows = []
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CompareError(f"{path} is not a compare.csv: columns {missing} are missing.")
        for raw in reader:
            row: dict[str, Any] = dict(raw)
            for key in ("lr", "val_acc", "test_acc", "seconds_per_epoch"):
                row[key] = float(raw[key]) if raw.get(key) not in (None, "") else None
            for key in ("seed", "trainable_params"):
                row[key] = int(raw[key]) if raw.get(key) not in (None, "") else None
            row["selected"] = raw.get("selected", "True") == "True"
            rows.append(row)
    return rows


def compare(factory: ModelFactory, data: CompareData, config: CompareConfig, out_dir: str | Path,
            log: Callable[[str], None] | None = None) -> tuple[list[RunRecord], dict[str, Any]]:
    """Run the comparison and write its outputs; returns the records and the summary."""
    records = Comparison(factory, data, config, out_dir, log).run()
    return records, build_summary(records, config)


__all__ = [
    "COMPARE_CSV", "CSV_COLUMNS", "DEFAULT_LRS", "DEFAULT_METHODS", "PAIRS", "SUMMARY_JSON", "SUMMARY_MD",
    "TABLE3_CHAINS", "CompareConfig", "CompareData", "CompareError", "Comparison", "RunRecord", "build_summary",
    "compare", "display_name", "method_names", "method_prompt_config", "method_role", "pair_intervals",
    "read_compare_csv", "run_dir_for", "summary_markdown", "write_outputs",
]
