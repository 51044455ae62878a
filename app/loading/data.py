"""The images the dashboard shows: the checkpoint's test split and validated uploads, as the model sees them
and as they are displayed."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image
from torch.utils.data import Dataset

from app.loading.models import DashboardModel
from tcpa_core.data import DEFAULT_MAX_PIXELS, build_transforms, load_image, open_split
from tcpa_viz.models import display_image

DEFAULT_DATASET: dict[str, Any] = {"name": "digits", "root": None, "seed": 0, "options": {}}


def dataset_spec(loaded: DashboardModel) -> dict[str, Any]:
    """The dataset the checkpoint was trained on (from its JSON), or the digits demo task."""
    spec = loaded.info.meta.get("dataset")
    return dict(spec) if isinstance(spec, dict) and spec.get("name") else dict(DEFAULT_DATASET)


@st.cache_resource(max_entries=4, show_spinner=False)
def open_dataset(spec_json: str, config_json: str, split: str = "test") -> Dataset:
    """Split ``split`` (default the test split) of the dataset described by ``spec_json``
    (``tcpa_core.data.open_split``: the run's recorded ``max_samples`` subset included) with the evaluation
    transform of the model."""
    return open_split(json.loads(spec_json), split, build_transforms(json.loads(config_json), train=False))


@dataclass(frozen=True)
class PreparedImage:
    """One image as the model sees it and as it is displayed."""

    key: str
    tensor: torch.Tensor
    display: np.ndarray
    label: int | None
    name: str
    notes: tuple[str, ...] = ()


def dataset_image(dataset: Dataset, data_key: str, index: int, cfg: dict[str, Any]) -> PreparedImage:
    """Test image ``index`` of ``dataset``."""
    tensor, label = dataset[index]
    return PreparedImage(key=f"{data_key}#{index}", tensor=tensor.unsqueeze(0), display=display_image(tensor, cfg),
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
        change = (f"aspect ratio {size[0] / size[1]:.2f} -> {width / height:.2f}, the image is stretched"
                  if abs(size[0] * height - size[1] * width) > 0 else "aspect ratio kept")
        notes.append(f"resized from {size[0]}x{size[1]} to the model's {width}x{height} input ({change})")
    tensor = build_transforms(cfg, train=False)(image)
    return PreparedImage(key=f"upload:{digest}:{config_json}", tensor=tensor.unsqueeze(0),
                         display=display_image(tensor, cfg), label=None, name=name, notes=tuple(notes))


def upload_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]
