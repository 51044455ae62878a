"""Dataset-level numbers of the views (``st.cache_data``): features, t-SNE, rank tables and the assignment
CSV export."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import Dataset

from app.loading.captures import batches
from app.loading.models import LoadedModel
from tcpa_core import TokenLayout, capture
from tcpa_viz import TSNEResult, aggregate_ranks, rank_table, run_tsne, write_assignments_csv


@st.cache_data(max_entries=8, show_spinner=False)
def dataset_features(model_key: str, data_key: str, count: int, _loaded: LoadedModel,
                     _dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits features ``[N, D]`` and labels ``[N]`` of the first ``count`` test images."""
    feats, labels = [], []
    for images, targets in batches(_dataset, count):
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
    for images, _ in batches(_dataset, count):
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
