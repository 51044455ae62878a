"""``prompt_importance``: the causal effect of every pool entry, and of the selection rule, on the prediction.

For every chosen block ``l`` x pool x entry and mode (``mask``: the entry's key columns are 0 in the mask
of every query, still in the softmax; ``remove``: the entry leaves the pool, see DESIGN.md section 7), the
accuracy and the mean change of the true-class logit over the dataset; for every selection rule
(``random``, ``shared``, ``all``) the accuracy of the whole model with that rule in every block.

Batched: per batch the trunk runs once (``model.embed`` and ``model.run_blocks`` block by block, keeping the
stream entering every chosen block), and each intervention reruns only blocks ``l..L-1`` from the stored
stream (:meth:`PromptedViT.logits_from`: the last block computes only the class-token row the head reads).
Masking an entry changes nothing for an image where no token selected it (its column is already 0
for every query), so ``mask`` reruns only the images where some token of block ``l`` selected the entry and
keeps the unchanged logits of the others: the effect of an entry nobody selects is exactly 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tcpa_core import capture, intervene
from tcpa_core.distributed import all_reduce_sum, is_main_process
from tcpa_core.errors import PromptConfigError
from tcpa_core.model import PromptedViT

from .data import shard_loader
from .stats import ASSIGN_NAMES, _check_model, _resolve_layers

MODES = ("mask", "remove")
RULES = ("random", "shared", "all")
ABLATION_COLUMNS = ("layer", "pool", "entry", "mode", "accuracy", "delta_accuracy", "delta_true_logit",
                    "base_accuracy", "changed_predictions", "images_selecting", "images")
"""Columns of ``ablation.csv``: ``changed_predictions`` = share of images whose predicted class changed,
``images_selecting`` = images where at least one token of that block selected the entry (empty for rules)."""


@dataclass
class ImportanceResult:
    """Rows of :func:`prompt_importance` (see :data:`ABLATION_COLUMNS`): one per (layer, pool, entry, mode),
    then one per selection rule with ``layer = pool = "all"`` and ``entry = None``."""

    base_accuracy: float
    num_images: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def entries(self, mode: str | None = None) -> list[dict[str, Any]]:
        """The single-entry rows (optionally of one mode)."""
        return [r for r in self.rows if r["layer"] != "all" and (mode is None or r["mode"] == mode)]

    def rules(self) -> list[dict[str, Any]]:
        """The selection-rule rows."""
        return [r for r in self.rows if r["layer"] == "all"]

    def ranking(self, mode: str = "mask", top: int | None = None) -> list[dict[str, Any]]:
        """Single-entry rows of ``mode`` from the largest accuracy drop (then true-logit drop) down."""
        rows = sorted(self.entries(mode), key=lambda r: (r["delta_accuracy"], r["delta_true_logit"]))
        return rows[:top] if top is not None else rows


def _score(logits: torch.Tensor, subset: torch.Tensor | None, base: torch.Tensor, labels: torch.Tensor,
           base_pred: torch.Tensor, base_true: torch.Tensor) -> np.ndarray:
    """``[correct, sum of true-logit change, changed predictions, 0]`` of a batch whose logits are ``base``
    except for the rows ``subset`` (all rows when None), which are ``logits``."""
    full = base.clone()
    if subset is None:
        full = logits
    else:
        full[subset] = logits
    rows = torch.arange(len(labels), device=labels.device)
    pred = full.argmax(-1)
    return np.array([float((pred == labels).sum()), float((full[rows, labels] - base_true).sum()),
                     float((pred != base_pred).sum()), 0.0])


def _check_names(values: Iterable[str], allowed: Sequence[str], what: str) -> list[str]:
    chosen = list(values)
    bad = [v for v in chosen if v not in allowed]
    if bad:
        raise PromptConfigError(f"unknown {what} {bad}; choose from {', '.join(allowed)}.")
    return chosen


@torch.no_grad()
def prompt_importance(
    model: PromptedViT,
    dataset: Dataset,
    layers: Any = None,
    *,
    pools: Iterable[str] = ("cls", "image"),
    entries: Iterable[int] | None = None,
    modes: Iterable[str] = MODES,
    rules: Iterable[str] = RULES,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    seed: int = 0,
) -> ImportanceResult:
    """Single-entry ablations and selection rules on ``dataset`` (``(image, label)`` samples).

    Args:
        model: a ``PromptedViT`` with method ``tcpa``.
        layers: blocks whose entries are ablated (negative allowed; default all; ``[]`` = rules only).
        pools: ``"cls"`` and/or ``"image"``.
        entries: entry indices to ablate in every chosen pool (default all).
        modes: ``"mask"`` and/or ``"remove"``.
        rules: selection rules evaluated on the whole model (``"random"``, ``"shared"``, ``"all"``).
        seed: seed of the ``"random"`` rule.
    Returns:
        :class:`ImportanceResult` (identical on every rank under ``torchrun``: counts are all-reduced).
    """
    from tqdm.auto import tqdm

    _check_model(model)
    chosen = _resolve_layers(model, layers) if layers is None or list(layers) else []
    pool_list = _check_names(pools, ("cls", "image"), "pools")
    if model.num_prefix == 0:
        pool_list = [p for p in pool_list if p != "cls"]
    mode_list = _check_names(modes, MODES, "modes")
    rule_list = _check_names(rules, RULES, "selection rules")
    sizes = {"cls": model.config.cls_pool_size, "image": model.config.image_pool_size}
    entry_list: dict[str, list[int]] = {}
    for p in pool_list:
        wanted = list(range(sizes[p])) if entries is None else [int(e) for e in entries]
        bad = [e for e in wanted if not 0 <= e < sizes[p]]
        if bad:
            raise PromptConfigError(f"entries {bad} do not exist in the {p} pool (entries 0..{sizes[p] - 1}).")
        entry_list[p] = wanted
    jobs = [(layer, p, e, mode) for layer in chosen for p in pool_list for e in entry_list[p] for mode in mode_list]
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev)
    was_training = model.training
    model.eval()
    # per job: correct, sum of true-logit change, changed predictions, images selecting
    sums = np.zeros((len(jobs), 4))
    rule_sums = np.zeros((len(rule_list), 4))
    base_correct = 0.0
    images_seen = 0.0
    loader = shard_loader(dataset, batch_size, num_workers, dev)
    try:
        for images, labels, _ in tqdm(loader, desc="ablate", leave=False, dynamic_ncols=True,
                                      disable=not (progress and is_main_process())):
            images, labels = images.to(dev), labels.to(dev)
            rows = torch.arange(len(labels), device=dev)
            names = [ASSIGN_NAMES[p] for p in pool_list]
            streams: dict[int, torch.Tensor] = {}
            with capture(model, layers=chosen or None, names=names) as cache:
                x, start = model.embed(images), 0
                for layer in chosen:
                    x = model.run_blocks(x, start, layer)[0]
                    streams[layer], start = x, layer
                base = model.logits_from(x, start)
            base_pred, base_true = base.argmax(-1), base[rows, labels]
            base_correct += float((base_pred == labels).sum())
            images_seen += len(labels)

            def score(logits: torch.Tensor, subset: torch.Tensor | None = None,
                      ref: tuple[torch.Tensor, ...] = (base, labels, base_pred, base_true)) -> np.ndarray:
                return _score(logits, subset, *ref)

            for j, (layer, p, e, mode) in enumerate(jobs):
                assign = cache[ASSIGN_NAMES[p], layer]
                selecting = (assign == e).flatten(1).any(1)
                n_sel = float(selecting.sum())
                if mode == "mask":
                    subset = torch.nonzero(selecting).flatten()
                    if len(subset) == 0:
                        sums[j] += score(base) + (0, 0, 0, n_sel)
                        continue
                    with intervene(model, mask_prompts={layer: {p: [e]}}):
                        out = model.logits_from(streams[layer][subset], layer)
                    sums[j] += score(out, subset) + (0, 0, 0, n_sel)
                else:
                    with intervene(model, remove_prompts={layer: {p: [e]}}):
                        out = model.logits_from(streams[layer], layer)
                    sums[j] += score(out) + (0, 0, 0, n_sel)
            for j, rule in enumerate(rule_list):
                with intervene(model, selection=rule, seed=seed):
                    rule_sums[j] += score(model.logits_from(model.embed(images)))
    finally:
        model.train(was_training)
    flat = all_reduce_sum([base_correct, images_seen, *sums.ravel(), *rule_sums.ravel()])
    base_correct, n = flat[0], flat[1]
    job_totals = np.asarray(flat[2:2 + sums.size]).reshape(sums.shape)
    rule_totals = np.asarray(flat[2 + sums.size:]).reshape(rule_sums.shape)
    base_acc = float(base_correct / n)
    result = ImportanceResult(base_accuracy=base_acc, num_images=int(n))

    def row(layer: Any, p: str, e: int | None, mode: str, totals: np.ndarray, selecting: Any) -> dict[str, Any]:
        s = [float(v) for v in totals]
        return {"layer": layer, "pool": p, "entry": e, "mode": mode, "accuracy": s[0] / n,
                "delta_accuracy": s[0] / n - base_acc, "delta_true_logit": s[1] / n, "base_accuracy": base_acc,
                "changed_predictions": s[2] / n, "images_selecting": selecting, "images": int(n)}

    for (layer, p, e, mode), s in zip(jobs, job_totals, strict=True):
        result.rows.append(row(layer, p, e, mode, s, int(s[3])))
    for rule, s in zip(rule_list, rule_totals, strict=True):
        result.rows.append(row("all", "all", None, rule, s, None))
    return result


__all__ = ["ABLATION_COLUMNS", "MODES", "RULES", "ImportanceResult", "prompt_importance"]
