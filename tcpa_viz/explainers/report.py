"""The explain report: every explainer on a baseline and a TCPA checkpoint, faithfulness table and figures.

:func:`explain_report` writes into ``out_dir``:

* ``faithfulness.csv``: one row per (model, method) with ``model, method, deletion_auc, insertion_auc,
  pointing, box_energy, deletion_auc_random, insertion_auc_random`` (means over the images; the random
  columns are the random-order baseline of that model, the same for all its methods), plus ``num_images``,
  ``fill``, ``steps`` and the checkpoint path;
* ``faithfulness.json``: the same rows with the mean curves, and the settings;
* ``explain_overlays.png`` / ``.html``: the maps of every method, baseline and TCPA side by side;
* ``explain_curves.png`` / ``.html``: mean deletion and insertion curves with their AUC beside the random order.

Images are a seeded subset of the split; each model explains its own predicted class.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from tcpa_core.data import dataset_size
from tcpa_core.model import PromptedViT

from ..figures.common import (
    DEFAULT_DEMO_DIR,
    LoadedModel,
    ModelInputs,
    box_to_input,
    load_pair,
    pil_image,
    pixel_boxes,
    resolve_data,
    sample_indices,
    write_figures,
)
from ..tables import write_rows_csv, write_rows_json
from .base import EXPLAINERS, Explanation, ExplanationError, explain
from .faithfulness import FaithfulnessResult, Fill, faithfulness

DEMO_IMAGES = 8
"""Test images the demo explains (a seeded subset of the test split; ``tcpa-viz explain`` takes more)."""
CSV_COLUMNS = ("model", "method", "deletion_auc", "insertion_auc", "pointing", "box_energy",
               "deletion_auc_random", "insertion_auc_random", "num_images", "fill", "steps", "checkpoint")


@dataclass
class ExplainSettings:
    """What the report computes.

    Attributes:
        methods: explainer names (default: all registered).
        num_images: images of the split explained and scored (seeded subset; ``None`` = all).
        steps: deletion/insertion steps (``steps + 1`` curve points).
        fill: ``"blur"`` or ``"mean"`` (``"mean"``: the per-channel mean of the scored images).
        ig_steps: integration points of integrated gradients.
        batch_size: images per forward pass of the faithfulness curves.
        explain_batch: images per explanation call.
        shown: images drawn in the overlay figure.
        seed: seed of the image subset and of the random orders.
    """

    methods: tuple[str, ...] = field(default_factory=lambda: tuple(EXPLAINERS))
    num_images: int | None = 64
    steps: int = 8
    fill: Fill = "blur"
    ig_steps: int = 32
    batch_size: int = 128
    explain_batch: int = 32
    shown: int = 3
    seed: int = 0

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in EXPLAINERS]
        if unknown or not self.methods:
            raise ExplanationError(f"unknown explanation method(s) {unknown}; choose from {', '.join(EXPLAINERS)}.")
        if self.num_images is not None and self.num_images < 1:
            raise ExplanationError(f"num_images must be >= 1, got {self.num_images}.")
        if self.fill not in ("blur", "mean"):
            raise ExplanationError(f"fill must be 'blur' or 'mean', got {self.fill!r}.")
        if self.ig_steps < 1 or self.batch_size < 1 or self.explain_batch < 1 or self.shown < 0:
            raise ExplanationError("ig_steps, batch_size and explain_batch must be >= 1 and shown >= 0.")


@dataclass
class ModelReport:
    """One model's explanations and faithfulness on the report's images."""

    loaded: LoadedModel
    images: torch.Tensor
    boxes: torch.Tensor | None
    explanations: dict[str, Explanation]
    results: dict[str, FaithfulnessResult]
    seconds: dict[str, float]


def concat_explanations(parts: Sequence[Explanation]) -> Explanation:
    """One explanation of consecutive batches from their explanations (tensors on the CPU)."""
    first = parts[0]

    def cat(values: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([v.cpu() for v in values])

    def join(name: str) -> torch.Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else cat(values)

    extras = {k: cat([p.extras[k] for p in parts]) for k in first.extras}
    return Explanation(first.method, cat([p.patches for p in parts]), join("prompts"), cat([p.target for p in parts]),
                       cat([p.logits for p in parts]), first.layout, join("prompts_per_layer"), join("prefix"), extras)


def input_boxes(data: Dataset, indices: Sequence[int], model: PromptedViT) -> torch.Tensor | None:
    """Ground-truth boxes ``[N, 4]`` of the samples in model-input pixels, or ``None`` without boxes."""
    boxes = pixel_boxes(data)
    if boxes is None:
        return None
    out = []
    for i in indices:
        raw = pil_image(data, int(i))
        out.append(box_to_input(boxes[int(i)], (raw.height, raw.width), model))
    return torch.tensor(out, dtype=torch.float64)


def explain_model(loaded: LoadedModel, data: Dataset, indices: Sequence[int], settings: ExplainSettings,
                  log: Callable[[str], None] | None = None) -> ModelReport:
    """Every method of ``settings`` on one model: explanations, faithfulness and box scores."""
    model = loaded.model
    inputs = ModelInputs(data, model, indices)
    images = inputs.batch()
    boxes = input_boxes(data, indices, model)
    mean: float | torch.Tensor = images.mean(dim=(0, 2, 3)) if settings.fill == "mean" else 0.0
    explanations: dict[str, Explanation] = {}
    results: dict[str, FaithfulnessResult] = {}
    seconds: dict[str, float] = {}
    for i, method in enumerate(settings.methods):
        start = time.perf_counter()
        options = {"n_steps": settings.ig_steps} if method == "integrated-gradients" else {}
        step = settings.explain_batch
        parts = [explain(model, images[j:j + step], method=method, **options) for j in range(0, len(images), step)]
        explanations[method] = concat_explanations(parts)
        results[method] = faithfulness(model, images, explanations[method], boxes=boxes, fill=settings.fill,
                                       mean=mean, steps=settings.steps, random_orders=1 if i == 0 else 0,
                                       seed=settings.seed, batch_size=settings.batch_size)
        seconds[method] = time.perf_counter() - start
        if log is not None:
            log(f"{loaded.label} {method}: {seconds[method]:.1f} s")
    return ModelReport(loaded, images, boxes, explanations, results, seconds)


def report_rows(reports: Sequence[ModelReport], settings: ExplainSettings) -> list[dict[str, Any]]:
    """Rows of ``faithfulness.csv`` (see the module docstring)."""
    rows = []
    for rep in reports:
        random = rep.results[settings.methods[0]].summary()
        for method, result in rep.results.items():
            s = result.summary()
            rows.append({
                "model": rep.loaded.label, "method": method,
                "deletion_auc": s["deletion_auc"], "insertion_auc": s["insertion_auc"],
                "pointing": s.get("pointing", float("nan")), "box_energy": s.get("box_energy", float("nan")),
                "deletion_auc_random": random["deletion_random_auc"],
                "insertion_auc_random": random["insertion_random_auc"],
                "num_images": len(rep.images), "fill": settings.fill, "steps": settings.steps,
                "checkpoint": str(rep.loaded.path),
            })
    return rows


def explain_report(models: Sequence[LoadedModel], data: Dataset, out_dir: str | Path,
                   settings: ExplainSettings | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """Explain, score and plot ``models`` (baseline first, then TCPA) on ``data``; returns the written files."""
    from .figures import curves_figures, overlay_figures

    settings = settings or ExplainSettings()
    settings.validate()
    if not models:
        raise ExplanationError("explain_report needs at least one model.")
    indices = [int(i) for i in sample_indices(dataset_size(data), settings.num_images, settings.seed)]
    reports = [explain_model(m, data, indices, settings, log) for m in models]
    out = Path(out_dir)
    rows = report_rows(reports, settings)
    written = [write_rows_csv(rows, out / "faithfulness.csv", CSV_COLUMNS)]
    curves = {f"{r.loaded.label}/{m}": {k: c.mean(0) for k, c in res.curves.items()}
              for r in reports for m, res in r.results.items()}
    written.append(write_rows_json(rows, out / "faithfulness.json", meta={
        "settings": asdict(settings), "indices": indices,
        "fractions": reports[0].results[settings.methods[0]].fractions,
        "mean_curves": curves, "seconds": {r.loaded.label: r.seconds for r in reports}}))
    written += write_figures(out, "explain_overlays", *overlay_figures(reports, settings.shown))
    written += write_figures(out, "explain_curves", *curves_figures(reports))
    return written


def run_demo_explain(baseline: LoadedModel | str | Path | None, tcpa: LoadedModel | str | Path | None,
                     test_data: Dataset | None, out_dir: str | Path, demo_dir: str | Path = DEFAULT_DEMO_DIR,
                     num_images: int = DEMO_IMAGES, log: Callable[[str], None] | None = None) -> list[Path]:
    """The demo's explain step: :func:`explain_report` of the two models (``None``: the demo folder's
    checkpoints) on ``num_images`` test images (``None`` data: the TCPA checkpoint's test split), with
    ``steps=4`` and ``ig_steps=8`` so that it stays within the demo's time budget (about 15 s on 2 cores)."""
    base, tc = load_pair(baseline, tcpa, demo_dir)
    data = test_data if test_data is not None else resolve_data(None, tc, "test")
    settings = ExplainSettings(num_images=num_images, steps=4, ig_steps=8)
    return explain_report([base, tc], data, out_dir, settings, log)
