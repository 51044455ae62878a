"""Captures: what the models record on the current image, and the prompt choices over a batch of test images
(``st.cache_resource``: tensors shared by every session, computed under the model's lock)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st
import torch
from torch.utils.data import Dataset

from app.loading.data import PreparedImage
from app.loading.models import DashboardModel
from tcpa_core import TokenLayout, capture
from tcpa_viz import pool_sizes, selection_stats

BATCH_SIZE = 32


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
def capture_image(model_key: str, image_key: str, _loaded: DashboardModel, _image: PreparedImage) -> ImageCapture:
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


def batches(dataset: Dataset, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
    labels: list[int]
    predictions: list[int]


@st.cache_resource(max_entries=6, show_spinner=False)
def batch_selection(model_key: str, data_key: str, count: int, _loaded: DashboardModel,
                    _dataset: Dataset) -> BatchSelection:
    """Prompt choices of every layer for the first ``count`` test images, with their per-layer usage,
    entropy and diversity numbers (``tcpa_viz.selection_stats``)."""
    model = _loaded.model
    cls: dict[int, list[torch.Tensor]] = {}
    img: dict[int, list[torch.Tensor]] = {}
    layout = None
    labels: list[int] = []
    predictions: list[int] = []
    for images, targets in batches(_dataset, count):
        with _loaded.lock, torch.no_grad(), capture(model, names=("cls_assign", "image_assign")) as cache:
            logits = model(images)
        labels += targets.tolist()
        predictions += logits.argmax(-1).tolist()
        layout = cache.layout
        for layer in cache.layers("cls_assign"):
            cls.setdefault(layer, []).append(cache["cls_assign", layer])
        for layer in cache.layers("image_assign"):
            img.setdefault(layer, []).append(cache["image_assign", layer])
    cls_assign = {l: torch.cat(v) for l, v in cls.items()}
    image_assign = {l: torch.cat(v) for l, v in img.items()}
    stats = selection_stats(cls_assign or None, image_assign or None, *pool_sizes(layout))
    return BatchSelection(layout=layout, cls_assign=cls_assign, image_assign=image_assign,
                          count=min(count, len(_dataset)), stats=stats, labels=labels,
                          predictions=predictions)
