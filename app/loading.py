"""Cached loading for the dashboard: checkpoint discovery, models, datasets, images and captures.

Heavy objects (models, datasets, captured tensors) live in ``st.cache_resource`` and are shared by every
browser session, so they are never modified after creation; every forward pass of a shared model runs
under the model's lock (``capture`` registers hooks on the model, which a concurrent forward would
trigger). Small, picklable results (checkpoint metadata, features, t-SNE, rank tables) use
``st.cache_data``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image
from threadpoolctl import threadpool_limits
from torch.utils.data import Dataset

from tcpa_core import CheckpointError, TokenLayout, capture
from tcpa_core.checkpoint import META_FILE, WEIGHTS_FILE, checkpoint_files, load_checkpoint, read_checkpoint_meta
from tcpa_core.data import DEFAULT_MAX_PIXELS, build_transforms, data_config, load_image
from tcpa_core.data.datasets import build_dataset
from tcpa_viz import (
    TSNEResult,
    aggregate_ranks,
    pool_sizes,
    rank_table,
    run_tsne,
    selection_stats,
    write_assignments_csv,
)

DEMO_DIR_ENV = "TCPA_VIZ_DEMO_DIR"
"""Environment variable naming the folder whose checkpoints are listed (default ``demo_out``)."""
CHECKPOINTS_ENV = "TCPA_VIZ_CHECKPOINTS"
"""Environment variable with extra checkpoint paths, separated by ``os.pathsep``."""
DEFAULT_DEMO_DIR = "demo_out"
SUMMARY_FILE = "summary.json"
BATCH_SIZE = 32
DEFAULT_DATASET: dict[str, Any] = {"name": "digits", "root": None, "seed": 0, "options": {}}
REPO_ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint found on disk (only its JSON header has been read)."""

    label: str
    weights: str
    method: str
    backbone: str
    fingerprint: str
    mtime: float
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def title(self) -> str:
        """``label (method, backbone)`` for selectors."""
        return f"{self.label} ({self.method}, {self.backbone})"


def resolve_demo_dir(given: str | None) -> Path:
    """The checkpoint folder to list: ``given``, else ``$TCPA_VIZ_DEMO_DIR``, else ``demo_out`` (looked up in
    the working directory first, then next to the ``app`` folder)."""
    text = given or os.environ.get(DEMO_DIR_ENV) or DEFAULT_DEMO_DIR
    path = Path(text).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    return path.resolve()


def extra_checkpoint_paths(given: Sequence[str] = ()) -> list[str]:
    """Checkpoint paths from the command line followed by those of ``$TCPA_VIZ_CHECKPOINTS``."""
    env = [p for p in os.environ.get(CHECKPOINTS_ENV, "").split(os.pathsep) if p.strip()]
    return list(dict.fromkeys([*given, *env]))


def _weights_for(path: Path) -> Path:
    """Weights file of a checkpoint given as a folder, a ``train --out`` folder, a .safetensors or a .json."""
    if path.is_dir() and not (path / WEIGHTS_FILE).is_file():
        for sub in ("best", "last"):
            if (path / sub / WEIGHTS_FILE).is_file():
                return path / sub / WEIGHTS_FILE
    return checkpoint_files(path)[0]


def _info(weights: Path, label: str) -> CheckpointInfo:
    meta = read_checkpoint_meta(weights)
    backbone = meta.get("backbone") or {}
    return CheckpointInfo(
        label=label,
        weights=str(weights.resolve()),
        method=str((meta.get("prompt_config") or {}).get("method", "?")),
        backbone=str(backbone.get("name", "?")),
        fingerprint=str(backbone.get("fingerprint", "")),
        mtime=weights.stat().st_mtime,
        meta=meta,
    )


@st.cache_data(ttl=15, show_spinner=False)
def discover_checkpoints(root: str) -> tuple[list[CheckpointInfo], list[str]]:
    """Checkpoints under ``root`` (every JSON with its weights file beside it) and the problems met.

    Labels are paths relative to ``root`` (``tcpa/best``); ``best`` checkpoints come first.
    """
    base = Path(root)
    if not base.is_dir():
        return [], []
    found: dict[str, CheckpointInfo] = {}
    problems: list[str] = []
    for meta_path in sorted(base.rglob("*.json")):
        weights = checkpoint_files(meta_path)[0]
        if not weights.is_file() or str(weights.resolve()) in found:
            continue
        rel = (meta_path.parent if meta_path.name == META_FILE else meta_path.with_suffix("")).relative_to(base)
        try:
            info = _info(weights, rel.as_posix() or base.name)
        except CheckpointError as exc:
            problems.append(f"{rel}: {exc}")
            continue
        found[info.weights] = info
    infos = sorted(found.values(), key=lambda i: (not i.label.endswith("best"), i.label))
    return infos, problems


@st.cache_data(ttl=15, show_spinner=False)
def describe_checkpoint(path: str) -> CheckpointInfo:
    """Read the header of a checkpoint given by the user (raises CheckpointError with a readable message)."""
    given = Path(path.strip()).expanduser()
    if not str(path).strip():
        raise CheckpointError("Enter the path of a checkpoint folder or .safetensors file.")
    if not given.exists():
        raise CheckpointError(
            f"No checkpoint at {given}: the path does not exist. Give a checkpoint folder (with {WEIGHTS_FILE} "
            f"and {META_FILE}), the .safetensors file itself, or a `tcpa-viz train --out` folder."
        )
    return _info(_weights_for(given), str(given))


def default_choice(infos: Sequence[CheckpointInfo], tcpa: bool) -> int | None:
    """Index of the default TCPA (``tcpa=True``) or baseline checkpoint: ``best`` ones first; for the
    baseline VPT-deep is preferred."""
    ranked = []
    for i, info in enumerate(infos):
        if (info.method == "tcpa") != tcpa:
            continue
        ranked.append((not info.label.endswith("best"), info.method != "vpt-deep", i))
    return min(ranked)[2] if ranked else None


@st.cache_data(ttl=15, show_spinner=False)
def demo_summary(root: str) -> dict[str, Any]:
    """``summary.json`` of the demo folder (``{}`` when missing or unreadable)."""
    path = Path(root) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary_test_accuracy(info: CheckpointInfo, summary: dict[str, Any]) -> float | None:
    """Test accuracy recorded for this checkpoint in the demo summary (matched on ``<method>/<best>``)."""
    tail = Path(info.weights).parent.parts[-2:]
    for entry in (summary.get("methods") or {}).values():
        ckpt = entry.get("checkpoint")
        if ckpt and Path(ckpt).parts[-2:] == tail and entry.get("test_acc") is not None:
            return float(entry["test_acc"])
    return None


# ------------------------------------------------------------------------------------------ models
@dataclass
class LoadedModel:
    """A loaded checkpoint with what the views need about it."""

    key: str
    info: CheckpointInfo
    model: torch.nn.Module
    data_config: dict[str, Any]
    counts: dict[str, int]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def method(self) -> str:
        return self.model.config.method

    @property
    def depth(self) -> int:
        return self.model.depth

    @property
    def num_heads(self) -> int:
        return int(self.model.backbone.blocks[0].attn.num_heads)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.model.backbone.patch_embed.grid_size)

    @property
    def has_selection(self) -> bool:
        """True for TCPA with token matching (the model records per-token prompt choices)."""
        return self.model.config.uses_token_matching

    @property
    def class_names(self) -> list[str]:
        names = self.info.meta.get("class_names")
        if names and len(names) == self.model.num_classes:
            return [str(n) for n in names]
        return [str(i) for i in range(self.model.num_classes)]

    @property
    def data_key(self) -> str:
        return json.dumps(self.data_config, sort_keys=True)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of a PromptedViT: total, frozen backbone, prompts (incl. input prompt), head, trainable."""
    def count(module: torch.nn.Module | None) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    return {
        "total": count(model),
        "backbone": count(model.backbone),
        "prompts": count(model.prompts) + count(model.input_prompt),
        "head": count(model.head),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def model_data_config(model: torch.nn.Module) -> dict[str, Any]:
    """The backbone's data config with the input size it was actually built for."""
    cfg = dict(model.data_config)
    cfg["input_size"] = (3, *tuple(model.backbone.patch_embed.img_size))
    out = data_config(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


@st.cache_resource(max_entries=6, show_spinner=False)
def load_model(weights: str, mtime: float) -> LoadedModel:
    """Rebuild and load the checkpoint (``mtime`` invalidates the cache when the file is rewritten)."""
    info = _info(Path(weights), Path(weights).parent.name)
    model = load_checkpoint(weights).eval()
    return LoadedModel(key=f"{weights}@{mtime}", info=info, model=model, data_config=model_data_config(model),
                       counts=parameter_counts(model))


def backbone_mismatch(a: LoadedModel, b: LoadedModel) -> str | None:
    """Why two models cannot be compared on the same images (``None`` when they can)."""
    if a.info.fingerprint and b.info.fingerprint and a.info.fingerprint != b.info.fingerprint:
        return (f"the baseline {b.info.label} was trained on backbone {b.info.backbone!r} (fingerprint "
                f"{b.info.fingerprint[:12]}) but {a.info.label} on {a.info.backbone!r} (fingerprint "
                f"{a.info.fingerprint[:12]})")
    if a.data_config != b.data_config:
        return (f"the two models take different inputs ({a.data_config['input_size']} vs "
                f"{b.data_config['input_size']})")
    return None


# ------------------------------------------------------------------------------------------ data
def dataset_spec(loaded: LoadedModel) -> dict[str, Any]:
    """The dataset the checkpoint was trained on (from its JSON), or the digits demo task."""
    spec = loaded.info.meta.get("dataset")
    return dict(spec) if isinstance(spec, dict) and spec.get("name") else dict(DEFAULT_DATASET)


@st.cache_resource(max_entries=4, show_spinner=False)
def open_dataset(spec_json: str, config_json: str) -> Dataset:
    """Test split of the dataset described by ``spec_json`` with the evaluation transform of the model."""
    spec, cfg = json.loads(spec_json), json.loads(config_json)
    transform = build_transforms(cfg, train=False)
    return build_dataset(spec["name"], spec.get("root"), "test", transform,
                         val_fraction=spec.get("val_fraction", 0.1), seed=spec.get("seed", 0),
                         **(spec.get("options") or {}))


@dataclass(frozen=True)
class PreparedImage:
    """One image as the model sees it and as it is displayed."""

    key: str
    tensor: torch.Tensor
    display: np.ndarray
    label: int | None
    name: str
    notes: tuple[str, ...] = ()


def to_display(tensor: torch.Tensor, cfg: dict[str, Any]) -> np.ndarray:
    """Undo the normalisation of ``[3, H, W]``: uint8 ``[H, W, 3]``."""
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    pixels = (tensor * std + mean).clamp(0, 1).mul(255).round().byte()
    return pixels.permute(1, 2, 0).numpy()


def dataset_image(dataset: Dataset, data_key: str, index: int, cfg: dict[str, Any]) -> PreparedImage:
    """Test image ``index`` of ``dataset``."""
    tensor, label = dataset[index]
    return PreparedImage(key=f"{data_key}#{index}", tensor=tensor.unsqueeze(0), display=to_display(tensor, cfg),
                         label=int(label), name=f"test image {index}")


@st.cache_resource(max_entries=8, show_spinner=False)
def upload_image(digest: str, name: str, config_json: str, _data: bytes) -> PreparedImage:
    """Validate and prepare an uploaded file (raises ImageFormatError for files that are not usable images)."""
    cfg = json.loads(config_json)
    notes = []
    try:
        with Image.open(io.BytesIO(_data)) as probe:
            mode, size = probe.mode, probe.size
    except (OSError, ValueError, Image.DecompressionBombError):
        mode, size = "RGB", None
    image = load_image(_data, max_pixels=DEFAULT_MAX_PIXELS)
    if mode != "RGB":
        extra = " (transparent pixels composited on white)" if "A" in mode or mode == "P" else ""
        notes.append(f"converted the {mode} image to RGB{extra}")
    height, width = cfg["input_size"][1:]
    if size is not None and tuple(size) != (width, height):
        notes.append(f"resized from {size[0]}x{size[1]} to the model's {width}x{height} input")
    tensor = build_transforms(cfg, train=False)(image)
    return PreparedImage(key=f"upload:{digest}:{config_json}", tensor=tensor.unsqueeze(0),
                         display=to_display(tensor, cfg), label=None, name=name, notes=tuple(notes))


def upload_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


# ------------------------------------------------------------------------------------------ captures
@dataclass(frozen=True)
class ImageCapture:
    """What one forward pass on one image recorded (batch dimension removed)."""

    layout: TokenLayout
    attn: list[torch.Tensor]
    attn_raw: list[torch.Tensor]
    mask: list[torch.Tensor]
    cls_assign: np.ndarray | None
    image_assign: np.ndarray | None
    probs: np.ndarray

    @property
    def depth(self) -> int:
        return len(self.attn)

    def batch_attention(self, layer: int, raw: bool = False) -> torch.Tensor:
        """``[1, H, Q, K]`` attention of ``layer`` (before the mask when ``raw``)."""
        return (self.attn_raw if raw else self.attn)[layer].unsqueeze(0)


@st.cache_resource(max_entries=24, show_spinner=False)
def capture_image(model_key: str, image_key: str, _loaded: LoadedModel, _image: PreparedImage) -> ImageCapture:
    """Attention, masks, prompt choices and class probabilities of one image."""
    model = _loaded.model
    names = ("attn", "attn_raw", "mask", "cls_assign", "image_assign")
    with _loaded.lock, torch.no_grad(), capture(model, names=names) as cache:
        logits = model(_image.tensor)
    depth = model.depth
    cls = [cache["cls_assign", l][0] for l in range(depth)] if ("cls_assign", 0) in cache else None
    img = [cache["image_assign", l][0] for l in range(depth)] if ("image_assign", 0) in cache else None
    return ImageCapture(
        layout=cache.layout,
        attn=[cache["attn", l][0] for l in range(depth)],
        attn_raw=[cache["attn_raw", l][0] for l in range(depth)],
        mask=[cache["mask", l][0] for l in range(depth)],
        cls_assign=torch.stack(cls).numpy() if cls else None,
        image_assign=torch.stack(img).numpy() if img else None,
        probs=torch.softmax(logits[0], dim=-1).numpy(),
    )


def _batches(dataset: Dataset, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n = min(count, len(dataset))
    out = []
    for start in range(0, n, BATCH_SIZE):
        items = [dataset[i] for i in range(start, min(start + BATCH_SIZE, n))]
        out.append((torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])))
    return out


@dataclass(frozen=True)
class BatchSelection:
    """Prompt choices of the first ``count`` test images: ``layer -> [B, Kc]`` and ``layer -> [B, Np, Ki]``."""

    layout: TokenLayout
    cls_assign: dict[int, torch.Tensor]
    image_assign: dict[int, torch.Tensor]
    count: int
    stats: list[dict[str, Any]]


@st.cache_resource(max_entries=6, show_spinner=False)
def batch_selection(model_key: str, data_key: str, count: int, _loaded: LoadedModel,
                    _dataset: Dataset) -> BatchSelection:
    """Prompt choices of every layer for the first ``count`` test images, with their per-layer usage,
    entropy and diversity numbers (``tcpa_viz.selection_stats``)."""
    model = _loaded.model
    cls: dict[int, list[torch.Tensor]] = {}
    img: dict[int, list[torch.Tensor]] = {}
    layout = None
    for images, _ in _batches(_dataset, count):
        with _loaded.lock, torch.no_grad(), capture(model, names=("cls_assign", "image_assign")) as cache:
            model(images)
        layout = cache.layout
        for layer in cache.layers("cls_assign"):
            cls.setdefault(layer, []).append(cache["cls_assign", layer])
        for layer in cache.layers("image_assign"):
            img.setdefault(layer, []).append(cache["image_assign", layer])
    cls_assign = {l: torch.cat(v) for l, v in cls.items()}
    image_assign = {l: torch.cat(v) for l, v in img.items()}
    stats = selection_stats(cls_assign or None, image_assign or None, *pool_sizes(layout))
    return BatchSelection(layout=layout, cls_assign=cls_assign, image_assign=image_assign,
                          count=min(count, len(_dataset)), stats=stats)


@st.cache_data(max_entries=8, show_spinner=False)
def dataset_features(model_key: str, data_key: str, count: int, _loaded: LoadedModel,
                     _dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits features ``[N, D]`` and labels ``[N]`` of the first ``count`` test images."""
    feats, labels = [], []
    for images, targets in _batches(_dataset, count):
        with _loaded.lock, torch.no_grad():
            feats.append(_loaded.model.forward_features(images).float())
        labels.append(targets)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


@st.cache_data(max_entries=8, show_spinner=False)
def tsne(model_key: str, data_key: str, count: int, perplexity: float, _loaded: LoadedModel,
         _dataset: Dataset) -> TSNEResult:
    """t-SNE (with silhouette and k-NN numbers) of the features of the first ``count`` test images.

    scikit-learn runs single-threaded here: with torch's OpenMP runtime loaded in the same process, its
    BLAS/OpenMP thread pools spin against each other and the embedding gets tens of times slower on 2 cores.
    """
    feats, labels = dataset_features(model_key, data_key, count, _loaded, _dataset)
    with threadpool_limits(1):
        return run_tsne(feats, labels, perplexity=perplexity, max_iter=500, n_jobs=1)


@st.cache_data(max_entries=12, show_spinner=False)
def rank_aggregate(model_key: str, data_key: str, count: int, block: str, _loaded: LoadedModel,
                   _dataset: Dataset) -> list[dict[str, Any]]:
    """Rank measures per layer (mean/std over images and heads, plus head-averaged matrices)."""
    rows: list[dict[str, Any]] = []
    offset = 0
    for images, _ in _batches(_dataset, count):
        with _loaded.lock, torch.no_grad(), capture(_loaded.model, names=("attn",)) as cache:
            _loaded.model(images)
        attn = {l: cache["attn", l] for l in cache.layers("attn")}
        for row in rank_table(attn, cache.layout, block=block, include_head_mean=True):
            rows.append({**row, "image": row["image"] + offset})
        offset += images.shape[0]
    return aggregate_ranks(rows)


def assignments_csv(layout: TokenLayout, cls_assign: dict[int, Any] | None, image_assign: dict[int, Any] | None,
                    image_ids: Sequence[Any]) -> bytes:
    """CSV bytes of prompt assignments (one row per layer, image and token; see ``write_assignments_csv``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_assignments_csv(Path(tmp) / "assignments.csv", cls_assign, image_assign, layout,
                                     image_ids=list(image_ids))
        return path.read_bytes()
