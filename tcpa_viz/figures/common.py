"""Shared plumbing of the paper figures: the figure context (models, data, sample), datasets, query patches,
output files.

Every figure compares two checkpoints trained on the same backbone, a baseline (VPT-deep in the demo,
DAM-VP/VPT in the paper) and TCPA. A checkpoint is given as a path (a checkpoint folder, or a
``tcpa-viz train --out`` folder whose ``best/`` is used) or as an already loaded :class:`LoadedModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from tcpa_core import capture
from tcpa_core.checkpoint import check_same_backbone
from tcpa_core.config import PromptConfig
from tcpa_core.data import dataset_size, open_split
from tcpa_core.errors import DatasetError, PromptConfigError
from tcpa_core.model import PromptedViT

from ..errors import FigureArgumentError
from ..models import LoadedModel, load_run, read_demo_summary
from ..saving import save_figure

DEFAULT_DEMO_DIR = Path("demo_out")
"""Folder written by ``tcpa-viz demo`` (``<method>/best`` checkpoints and ``summary.json``)."""
FIGURES_SUBDIR = "figures"
"""Sub-folder of the demo folder that receives the figures and the rank report."""
DEMO_BASELINE_RUN = "vpt-deep"
DEMO_TCPA_RUN = "tcpa"
"""Run folders of the demo used when its ``summary.json`` lists no methods."""

ModelRef = str | Path | LoadedModel
"""A checkpoint given as a path or already loaded."""


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


# ------------------------------------------------------------------------------------------ checkpoints
def summary_config(method: str, info: dict[str, Any]) -> PromptConfig | None:
    """The prompt config of a run of a demo summary (``method`` and its entry ``info``): the entry's recorded
    ``prompt_config``, else the method's defaults; ``None`` for a method the registry does not know."""
    recorded = info.get("prompt_config")
    try:
        return PromptConfig.from_dict(recorded if isinstance(recorded, dict) else {"method": method})
    except (PromptConfigError, TypeError, ValueError):
        return None


def is_tcpa_family(method: str, info: dict[str, Any]) -> bool:
    """Whether a run of a demo summary is TCPA family (role ``"tcpa"`` in the method registry)."""
    config = summary_config(method, info)
    return config is not None and config.spec.role == "tcpa"


def demo_checkpoints(demo_dir: str | Path = DEFAULT_DEMO_DIR) -> tuple[Path, Path]:
    """``(baseline, tcpa)`` checkpoint folders of a demo folder.

    The methods come from ``summary.json`` when it lists them (TCPA = the first entry whose method has the
    registry role ``"tcpa"``, baseline = the first other one), else ``vpt-deep/best`` and ``tcpa/best``.
    """
    demo_dir = Path(demo_dir)
    methods: dict[str, Any] = (read_demo_summary(demo_dir) or {}).get("methods") or {}
    family = {m: is_tcpa_family(m, info or {}) for m, info in methods.items()}
    tcpa = next((m for m, is_tcpa in family.items() if is_tcpa), DEMO_TCPA_RUN)
    baseline = next((m for m, is_tcpa in family.items() if not is_tcpa), DEMO_BASELINE_RUN)

    def where(method: str) -> Path:
        recorded = (methods.get(method) or {}).get("checkpoint")
        if recorded and Path(recorded).exists():
            return Path(recorded)
        return demo_dir / method / "best"

    return where(baseline), where(tcpa)


def load_pair(baseline: ModelRef | None, tcpa: ModelRef | None, demo_dir: str | Path = DEFAULT_DEMO_DIR,
              backbone: str | None = None, backbone_weights: str | Path | None = None
              ) -> tuple[LoadedModel, LoadedModel]:
    """Load the two checkpoints (a missing one defaults to the demo folder's) and check that they can be
    compared (:func:`tcpa_core.checkpoint.check_same_backbone`: same backbone weights, input size, patch
    grid). When both would get the same label (e.g. two TCPA runs), the baseline's gets the suffix
    " (baseline)"."""
    defaults = demo_checkpoints(demo_dir)
    base = load_run(baseline if baseline is not None else defaults[0], backbone=backbone,
                    backbone_weights=backbone_weights)
    tc = load_run(tcpa if tcpa is not None else defaults[1], backbone=backbone, backbone_weights=backbone_weights)
    check_same_backbone(base, tc)
    if base.label == tc.label and not isinstance(baseline, LoadedModel):
        base.label = f"{base.label} (baseline)"
    return base, tc


# ------------------------------------------------------------------------------------------ data
def open_dataset(spec: DataSpec) -> Dataset:
    """The split of ``spec`` without a transform (images are transformed per model by :class:`ModelInputs`)."""
    return open_split({"name": spec.name, "root": spec.root, "seed": spec.seed, "val_fraction": spec.val_fraction,
                       "options": spec.options, "max_samples": spec.max_samples}, spec.split)


def resolve_data(data: DataSpec | Dataset | None, reference: LoadedModel, split: str = "test") -> Dataset:
    """A dataset object: ``data`` itself, the split of a :class:`DataSpec` (completed from the reference
    checkpoint's record, see :meth:`DataSpec.completed`), or (``None``) ``split`` of the dataset the reference
    checkpoint was trained on (the digits demo task when it records none)."""
    if data is None:
        data = DataSpec.from_meta(reference.meta, split)
    return open_dataset(data.completed(reference.meta)) if isinstance(data, DataSpec) else data


def _base(data: Dataset, index: int) -> tuple[Dataset, int]:
    while isinstance(data, Subset):
        subset: Subset = data
        data, index = subset.dataset, int(subset.indices[index])
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
        targets = [int(data[i][1]) for i in range(dataset_size(data))]
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


def sample_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """At most ``limit`` sorted sample indices of ``range(n)`` (a seeded random subset when ``n > limit``)."""
    if limit is None or n <= limit:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=int(limit), replace=False))


def eval_transform(model: PromptedViT) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform of a ``PromptedViT`` (resize, centre crop, normalise)."""
    from tcpa_core.data import build_transforms

    return build_transforms(model.data_config, train=False)


class ModelInputs(Dataset):
    """``(image tensor, label)`` of the samples ``indices`` of ``data``, transformed for ``model``."""

    def __init__(self, data: Dataset, model: PromptedViT, indices: Sequence[int] | None = None) -> None:
        self.data = data
        self.indices = [int(i) for i in (indices if indices is not None else range(dataset_size(data)))]
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


def predict(model: PromptedViT, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Predicted classes ``[B]`` of images ``[B, C, H, W]``."""
    with torch.inference_mode():
        return torch.cat([model(images[i:i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])


def choose_sample(data: Dataset, baseline: LoadedModel, tcpa: LoadedModel, candidates: int = 32) -> int:
    """The first of the first ``candidates`` samples that both models classify correctly (else 0)."""
    n = min(candidates, dataset_size(data))
    labels = torch.as_tensor(labels_of(data)[:n])
    ok = torch.ones(n, dtype=torch.bool)
    for loaded in (baseline, tcpa):
        ok &= predict(loaded.model, ModelInputs(data, loaded.model, range(n)).batch()) == labels
    hits = torch.nonzero(ok).flatten()
    return int(hits[0]) if len(hits) else 0


def capture_attention(model: PromptedViT, images: torch.Tensor, layers: Sequence[int] | None = None,
                      raw: bool = False) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], Any]:
    """Attention after the mask ``{layer: [B, H, Q, K]}``, before it (empty unless ``raw``) and the layout."""
    names = ["attn", "attn_raw"] if raw else ["attn"]
    with torch.inference_mode(), capture(model, layers=layers, names=names) as cache:
        model(images)
    masked = {layer: cache["attn", layer] for layer in cache.layers("attn")}
    before = {layer: cache["attn_raw", layer] for layer in cache.layers("attn_raw")}
    return masked, before, cache.layout


# ------------------------------------------------------------------------------------------ context
@dataclass
class FigureContext:
    """What a figure computes from once and hands to both of its renderers: the two models (checked to be
    comparable), the dataset and the sample shown (``index``; ``None`` for figures over many samples)."""

    baseline: LoadedModel
    tcpa: LoadedModel
    data: Dataset
    index: int | None = None

    @property
    def models(self) -> tuple[LoadedModel, LoadedModel]:
        return self.baseline, self.tcpa


def figure_context(baseline: ModelRef | None = None, tcpa: ModelRef | None = None,
                   data: DataSpec | Dataset | None = None, demo_dir: str | Path = DEFAULT_DEMO_DIR,
                   index: int | None = None, choose: bool = False) -> FigureContext:
    """Load the two checkpoints (:func:`load_pair`), open the data (:func:`resolve_data`) and, with ``choose``,
    pick the sample: ``index`` when given (checked against the dataset), else :func:`choose_sample`."""
    base, tc = load_pair(baseline, tcpa, demo_dir)
    dataset = resolve_data(data, base)
    if choose:
        n = dataset_size(dataset)
        index = choose_sample(dataset, base, tc) if index is None else int(index)
        if not 0 <= index < n:
            raise FigureArgumentError(f"--index {index} is outside the {n} samples of the dataset; pass an index "
                                      f"in 0..{n - 1}.")
    return FigureContext(base, tc, dataset, index)


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


def box_to_input(box: Sequence[float], raw_size: tuple[int, int], model: PromptedViT
                 ) -> tuple[float, float, float, float]:
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


def query_patches(data: Dataset, index: int, model: PromptedViT, grid_size: tuple[int, int]) -> QueryPatches:
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
    """Write ``<stem>.png`` (matplotlib) and ``<stem>.html`` (plotly; plotly.js shared by the folder's HTML files,
    see :func:`tcpa_viz.saving.save_figure`) into ``out_dir``."""
    out = Path(out_dir)
    return [save_figure(matplotlib_figure, out / f"{stem}.png", dpi=dpi),
            save_figure(plotly_figure, out / f"{stem}.html")]
