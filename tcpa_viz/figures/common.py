"""Shared plumbing of the paper figures: checkpoints, datasets, display images, query patches, output files.

Every figure compares two checkpoints trained on the same backbone, a baseline (VPT-deep in the demo,
DAM-VP/VPT in the paper) and TCPA. A checkpoint is given as a path (a checkpoint folder, or a
``tcpa-viz train --out`` folder whose ``best/`` is used) or as an already loaded :class:`LoadedModel`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from tcpa_core import capture
from tcpa_core.checkpoint import WEIGHTS_FILE, load_checkpoint
from tcpa_core.errors import CheckpointError, DatasetError, TCPAError

from ..saving import save_figure
from ..tsne import auto_threads

DEFAULT_DEMO_DIR = Path("demo_out")
"""Folder written by ``tcpa-viz demo`` (``<method>/best`` checkpoints and ``summary.json``)."""
FIGURES_SUBDIR = "figures"
"""Sub-folder of the demo folder that receives the figures and the rank report."""
DEMO_SUMMARY = "summary.json"
DEFAULT_BASELINE_METHOD = "vpt-deep"
DEFAULT_TCPA_METHOD = "tcpa"

METHOD_TITLES: dict[str, str] = {
    "none": "linear probe", "vpt-shallow": "VPT-shallow", "vpt-deep": "VPT-deep", "vfpt": "VFPT", "vp": "VP",
    "tcpa": "TCPA", "r-tcpa": "R-TCPA",
}
"""Display names of the prompting methods."""


class FigureArgumentError(TCPAError, ValueError):
    """Figure inputs that do not fit together (e.g. a different number of datasets and checkpoints)."""


@dataclass
class LoadedModel:
    """A checkpoint loaded for plotting.

    Attributes:
        model: the ``PromptedViT`` (eval mode, CPU unless loaded elsewhere).
        path: the checkpoint folder.
        label: display name (the method's title unless given).
        meta: the checkpoint's JSON description.
    """

    model: torch.nn.Module
    path: Path
    label: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.model.config.method)


@dataclass(frozen=True)
class DataSpec:
    """Which dataset split to plot: ``name``/``root`` as for :func:`tcpa_core.data.build_dataset`."""

    name: str = "digits"
    root: str | None = None
    split: str = "test"
    seed: int = 0
    val_fraction: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)
    max_samples: int | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any], split: str = "test") -> DataSpec:
        """The dataset a checkpoint was trained on (its ``dataset`` entry, including a ``max_samples`` cap of a
        quick run), ``split`` of it."""
        info = meta.get("dataset") or {}
        if not info.get("name"):
            return cls(split=split)
        return cls(name=str(info["name"]), root=info.get("root"), split=split, seed=int(info.get("seed", 0)),
                   val_fraction=float(info.get("val_fraction", 0.1)), options=dict(info.get("options") or {}),
                   max_samples=info.get("max_samples"))

    @property
    def title(self) -> str:
        return f"{self.name} {self.split} split"

    def completed(self, meta: dict[str, Any]) -> DataSpec:
        """This spec with the root, seed, validation fraction and options a checkpoint recorded for the same
        dataset (so that e.g. the digits test split is the one held out when that checkpoint was trained)."""
        info = meta.get("dataset") or {}
        if info.get("name") != self.name:
            return self
        return DataSpec(name=self.name, root=self.root or info.get("root"), split=self.split,
                        seed=int(info.get("seed", self.seed)),
                        val_fraction=float(info.get("val_fraction", self.val_fraction)),
                        options={**(info.get("options") or {}), **self.options},
                        max_samples=self.max_samples if self.max_samples is not None else info.get("max_samples"))


F = TypeVar("F", bound=Callable[..., Any])


def adaptive_threads(func: F) -> F:
    """Run ``func`` with as many torch threads as there are idle cores (:func:`tcpa_viz.tsne.auto_threads`),
    restoring the previous setting afterwards.

    The figures run small matrices (ViT forwards on a few images, SVDs of ~100 x 100 attention matrices),
    where torch's threads spinning on cores busy with other work cost several times the compute itself.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = torch.get_num_threads()
        torch.set_num_threads(max(1, min(previous, auto_threads())))
        try:
            return func(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ checkpoints
def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for ``path``: itself, or its ``best/`` when ``path`` is a training output folder."""
    p = Path(path).expanduser()
    if p.is_dir() and not (p / WEIGHTS_FILE).is_file() and (p / "best" / WEIGHTS_FILE).is_file():
        return p / "best"
    if not p.exists():
        raise CheckpointError(
            f"No checkpoint at {p}: the path does not exist. Run `tcpa-viz demo` first, or pass checkpoint "
            "folders with --baseline DIR --tcpa DIR."
        )
    return p


def load_model(ref: str | Path | LoadedModel, label: str | None = None, backbone: str | None = None,
               backbone_weights: str | Path | None = None) -> LoadedModel:
    """Load a checkpoint for plotting (a :class:`LoadedModel` is returned as is).

    ``backbone``/``backbone_weights`` override the backbone recorded in the checkpoint (see
    :func:`tcpa_core.checkpoint.load_checkpoint`).
    """
    if isinstance(ref, LoadedModel):
        return ref
    path = resolve_checkpoint(ref)
    model = load_checkpoint(path, backbone=backbone, checkpoint=backbone_weights)
    method = str(model.config.method)
    return LoadedModel(model, path, label or METHOD_TITLES.get(method, method), dict(model.checkpoint_meta))


def demo_summary(demo_dir: str | Path) -> dict[str, Any] | None:
    """``summary.json`` of a demo folder, or ``None`` when it does not exist."""
    path = Path(demo_dir) / DEMO_SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def demo_checkpoints(demo_dir: str | Path = DEFAULT_DEMO_DIR) -> tuple[Path, Path]:
    """``(baseline, tcpa)`` checkpoint folders of a demo folder.

    The methods come from ``summary.json`` when it lists them (TCPA = the first ``tcpa``/``r-tcpa`` entry,
    baseline = the first other one), else ``vpt-deep/best`` and ``tcpa/best``.
    """
    demo_dir = Path(demo_dir)
    summary = demo_summary(demo_dir) or {}
    methods = summary.get("methods") or {}
    tcpa = next((m for m in methods if m in ("tcpa", "r-tcpa")), DEFAULT_TCPA_METHOD)
    baseline = next((m for m in methods if m not in ("tcpa", "r-tcpa")), DEFAULT_BASELINE_METHOD)

    def where(method: str) -> Path:
        recorded = (methods.get(method) or {}).get("checkpoint")
        if recorded and Path(recorded).exists():
            return Path(recorded)
        return demo_dir / method / "best"

    return where(baseline), where(tcpa)


def load_pair(baseline: str | Path | LoadedModel | None, tcpa: str | Path | LoadedModel | None,
              demo_dir: str | Path = DEFAULT_DEMO_DIR, backbone: str | None = None,
              backbone_weights: str | Path | None = None) -> tuple[LoadedModel, LoadedModel]:
    """Load the two checkpoints; a missing one defaults to the demo folder's. When both would get the same label
    (e.g. two TCPA runs), the baseline's gets the suffix " (baseline)"."""
    default_baseline, default_tcpa = demo_checkpoints(demo_dir) if baseline is None or tcpa is None else (None, None)
    base = load_model(baseline if baseline is not None else default_baseline, backbone=backbone,
                      backbone_weights=backbone_weights)
    tc = load_model(tcpa if tcpa is not None else default_tcpa, backbone=backbone, backbone_weights=backbone_weights)
    if base.label == tc.label and not isinstance(baseline, LoadedModel):
        base.label = f"{base.label} (baseline)"
    return base, tc


# ------------------------------------------------------------------------------------------ data
def limit_samples(data: Dataset, max_samples: int | None, seed: int = 0) -> Dataset:
    """The seeded random subset of at most ``max_samples`` samples that ``tcpa-viz train/demo --max-samples``
    uses (sorted indices of ``torch.randperm`` seeded with ``seed``), or ``data`` itself."""
    if max_samples is None or max_samples >= len(data):
        return data
    if max_samples < 1:
        raise DatasetError(f"max_samples must be >= 1, got {max_samples}.")
    generator = torch.Generator().manual_seed(int(seed))
    return Subset(data, sorted(torch.randperm(len(data), generator=generator)[:max_samples].tolist()))


def open_dataset(spec: DataSpec) -> Dataset:
    """The split of ``spec`` without a transform (images are transformed per model by :class:`ModelInputs`)."""
    from tcpa_core.data.datasets import build_dataset

    data = build_dataset(spec.name, spec.root, spec.split, None, val_fraction=spec.val_fraction, seed=spec.seed,
                         **spec.options)
    return limit_samples(data, spec.max_samples, spec.seed)


def resolve_data(data: DataSpec | Dataset | None, reference: LoadedModel, split: str = "test") -> Dataset:
    """A dataset object: ``data`` itself, the split of a :class:`DataSpec` (completed from the reference
    checkpoint's record, see :meth:`DataSpec.completed`), or (``None``) ``split`` of the dataset the reference
    checkpoint was trained on (the digits demo task when it records none)."""
    if data is None:
        data = DataSpec.from_meta(reference.meta, split)
    return open_dataset(data.completed(reference.meta)) if isinstance(data, DataSpec) else data


def _base(data: Dataset, index: int) -> tuple[Dataset, int]:
    while isinstance(data, Subset):
        data, index = data.dataset, int(data.indices[index])
    return data, index


def pil_image(data: Dataset, index: int) -> Image.Image:
    """Sample ``index`` as an RGB PIL image, before any transform."""
    base, i = _base(data, index)
    if hasattr(base, "raw_image"):
        return Image.fromarray(np.asarray(base.raw_image(i)))
    if hasattr(base, "load"):
        return base.load(i).convert("RGB")
    transform = getattr(base, "transform", None)
    if transform is not None:
        raise DatasetError(f"{type(base).__name__} has a transform and no raw_image()/load(); pass it without one.")
    image = base[i][0]
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise DatasetError(f"cannot read sample {index} of {type(base).__name__} as an image")


def labels_of(data: Dataset) -> np.ndarray:
    """Class labels ``[N]`` (int64) of every sample, without decoding images where the dataset knows them."""
    if isinstance(data, Subset):
        parent = labels_of(data.dataset)
        return parent[np.asarray(data.indices, dtype=np.int64)]
    targets = getattr(data, "targets", None)
    if targets is None:
        targets = [int(data[i][1]) for i in range(len(data))]
    return np.asarray(list(targets), dtype=np.int64)


def class_names(data: Dataset) -> list[str] | None:
    """The dataset's class names, when it has them."""
    base = data
    while isinstance(base, Subset):
        base = base.dataset
    names = getattr(base, "classes", None)
    return [str(c) for c in names] if names else None


def pixel_boxes(data: Dataset) -> np.ndarray | None:
    """Ground-truth object boxes ``[N, 4]`` (x0, y0, x1, y1 in pixels of the raw image; ends exclusive) when the
    dataset has them (the digits demo task), else ``None``."""
    if isinstance(data, Subset):
        parent = pixel_boxes(data.dataset)
        return None if parent is None else parent[np.asarray(data.indices, dtype=np.int64)]
    boxes = getattr(data, "boxes", None)
    return None if boxes is None else np.asarray(boxes, dtype=np.float64)


def sample_indices(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """At most ``limit`` sorted sample indices of ``range(n)`` (a seeded random subset when ``n > limit``)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(limit), replace=False))


def eval_transform(model: torch.nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform of a ``PromptedViT`` (resize, centre crop, normalise)."""
    from tcpa_core.data import build_transforms

    return build_transforms(model.data_config, train=False)


class ModelInputs(Dataset):
    """``(image tensor, label)`` of the samples ``indices`` of ``data``, transformed for ``model``."""

    def __init__(self, data: Dataset, model: torch.nn.Module, indices: Sequence[int] | None = None) -> None:
        self.data = data
        self.indices = [int(i) for i in (indices if indices is not None else range(len(data)))]
        self.transform = eval_transform(model)
        self.labels = labels_of(data)[np.asarray(self.indices, dtype=np.int64)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(pil_image(self.data, self.indices[i])), int(self.labels[i])

    def batch(self, positions: Sequence[int] | None = None) -> torch.Tensor:
        """Images ``[B, C, H, W]`` of the given positions (default: all)."""
        positions = range(len(self)) if positions is None else positions
        return torch.stack([self[i][0] for i in positions])


def display_image(model: torch.nn.Module, image: torch.Tensor) -> np.ndarray:
    """Undo the normalisation of one model input ``[C, H, W]`` -> ``uint8 [H, W, 3]`` (what the model saw)."""
    cfg = model.data_config
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(-1, 1, 1)
    rgb = (image.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
    return (rgb.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Predicted classes ``[B]`` of images ``[B, C, H, W]``."""
    with torch.inference_mode():
        return torch.cat([model(images[i:i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])


def choose_sample(data: Dataset, baseline: LoadedModel, tcpa: LoadedModel, candidates: int = 32) -> int:
    """The first of the first ``candidates`` samples that both models classify correctly (else 0)."""
    n = min(candidates, len(data))
    labels = torch.as_tensor(labels_of(data)[:n])
    ok = torch.ones(n, dtype=torch.bool)
    for loaded in (baseline, tcpa):
        ok &= predict(loaded.model, ModelInputs(data, loaded.model, range(n)).batch()) == labels
    hits = torch.nonzero(ok).flatten()
    return int(hits[0]) if len(hits) else 0


def capture_attention(model: torch.nn.Module, images: torch.Tensor, layers: Sequence[int] | None = None,
                      raw: bool = False) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], Any]:
    """Attention after the mask ``{layer: [B, H, Q, K]}``, before it (empty unless ``raw``) and the layout."""
    names = ["attn", "attn_raw"] if raw else ["attn"]
    with torch.inference_mode(), capture(model, layers=layers, names=names) as cache:
        model(images)
    masked = {layer: cache["attn", layer] for layer in cache.layers("attn")}
    before = {layer: cache["attn_raw", layer] for layer in cache.layers("attn_raw")}
    return masked, before, cache.layout


# ------------------------------------------------------------------------------------------ query patches
@dataclass(frozen=True)
class QueryPatches:
    """The patch queries of Fig. 1/3: one on the object and one on the background.

    ``object_box`` is the ground-truth box ``(x0, y0, x1, y1)`` in model-input pixels, ``None`` when the
    dataset has no boxes (then ``object_patch`` is the grid centre). ``source`` says how they were chosen.
    """

    object_patch: tuple[int, int]
    background_patch: tuple[int, int]
    object_box: tuple[float, float, float, float] | None
    source: str


def box_to_input(box: Sequence[float], raw_size: tuple[int, int], model: torch.nn.Module) -> tuple[float, ...]:
    """Map a box in raw-image pixels (``raw_size = (H, W)``) through the evaluation transform (resize to
    ``size / crop_pct``, centre crop to ``size``) into model-input pixels."""
    cfg = model.data_config
    _, height, width = cfg["input_size"]
    crop = float(cfg.get("crop_pct") or 1.0)
    resized = (round(height / crop), round(width / crop))
    sy, sx = resized[0] / raw_size[0], resized[1] / raw_size[1]
    oy, ox = (resized[0] - height) / 2.0, (resized[1] - width) / 2.0
    x0, y0, x1, y1 = (float(v) for v in box)
    return (_clip(x0 * sx - ox, width), _clip(y0 * sy - oy, height), _clip(x1 * sx - ox, width),
            _clip(y1 * sy - oy, height))


def _clip(value: float, high: float) -> float:
    return min(max(value, 0.0), float(high))


def query_patches(data: Dataset, index: int, model: torch.nn.Module, grid_size: tuple[int, int]) -> QueryPatches:
    """The patch under the centre of the object's ground-truth box and the patch farthest from it.

    Without boxes: the grid centre and a corner patch.
    """
    h, w = grid_size
    _, height, width = model.data_config["input_size"]
    boxes = pixel_boxes(data)
    if boxes is not None:
        raw = pil_image(data, index)
        box = box_to_input(boxes[index], (raw.height, raw.width), model)
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        source = "centre of the ground-truth box"
    else:
        box, cx, cy = None, width / 2.0, height / 2.0
        source = "image centre (no boxes in this dataset)"
    row = min(max(int(cy * h / height), 0), h - 1)
    col = min(max(int(cx * w / width), 0), w - 1)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    centres_y, centres_x = (rows + 0.5) * height / h, (cols + 0.5) * width / w
    distance = np.hypot(centres_y - cy, centres_x - cx)
    if box is not None:
        px0, py0 = cols * width / w, rows * height / h
        overlaps = (px0 < box[2]) & (px0 + width / w > box[0]) & (py0 < box[3]) & (py0 + height / h > box[1])
        distance = np.where(overlaps, -1.0, distance)
    far = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return QueryPatches((row, col), (int(far[0]), int(far[1])), box, source)


# ------------------------------------------------------------------------------------------ output
def write_figures(out_dir: str | Path, stem: str, matplotlib_figure: Any, plotly_figure: Any,
                  dpi: int = 150) -> list[Path]:
    """Write ``<stem>.png`` (matplotlib) and ``<stem>.html`` (plotly, self-contained) into ``out_dir``."""
    out = Path(out_dir)
    return [save_figure(matplotlib_figure, out / f"{stem}.png", dpi=dpi),
            save_figure(plotly_figure, out / f"{stem}.html")]
