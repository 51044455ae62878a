"""Dataset-level numbers of the views (``st.cache_data``): features, t-SNE, rank tables and the assignment
CSV export."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
from torch.utils.data import Dataset, Subset

from app.loading.captures import BATCH_SIZE, batches
from app.loading.models import DashboardModel
from tcpa_core import TokenLayout, capture
from tcpa_core.train import extract_features
from tcpa_viz import TSNEResult, aggregate_ranks, rank_table, run_tsne, write_assignments_csv
from tcpa_viz.figures.common import labels_of


@st.cache_data(max_entries=4, show_spinner=False)
def dataset_labels(data_key: str, _dataset: Dataset) -> np.ndarray:
    """``[N]`` labels of the test set (``tcpa_viz.figures.common.labels_of``: from its ``targets`` when it has
    them, else by reading it)."""
    return labels_of(_dataset)


def stratified_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """``count`` test indices with the classes as balanced as the set allows: the indices of each class in
    order, taken round-robin over the classes (deterministic, so the sample is the same on every rerun)."""
    per_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    out: list[int] = []
    while len(out) < count and any(per_class):
        for queue in per_class:
            if queue and len(out) < count:
                out.append(int(queue.pop(0)))
    return np.sort(np.asarray(out, dtype=np.int64))


@st.cache_data(max_entries=8, show_spinner=False)
def dataset_features(model_key: str, data_key: str, indices: tuple[int, ...], _loaded: DashboardModel,
                     _dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre-logits features ``[N, D]`` (``tcpa_core.train.extract_features``), labels ``[N]`` and predictions
    ``[N]`` of the test images ``indices``."""
    with _loaded.lock, torch.no_grad():
        feats, labels = extract_features(_loaded.model, Subset(_dataset, list(indices)), batch_size=BATCH_SIZE)
        preds = _loaded.model.head(feats).argmax(-1)
    return feats.numpy(), labels.numpy(), preds.numpy()


@st.cache_data(max_entries=8, show_spinner=False)
def tsne(model_key: str, data_key: str, indices: tuple[int, ...], perplexity: float, _loaded: DashboardModel,
         _dataset: Dataset) -> tuple[TSNEResult, np.ndarray]:
    """t-SNE (with silhouette and k-NN numbers) of the features of the test images ``indices``, and the
    model's predictions on them.

    scikit-learn runs with the process thread policy the dashboard sets on every run
    (``tcpa_core.threads.configure_threads``, one thread by default).
    """
    feats, labels, preds = dataset_features(model_key, data_key, indices, _loaded, _dataset)
    return run_tsne(feats, labels, perplexity=perplexity, max_iter=500, n_jobs=1), preds


@st.cache_data(max_entries=12, show_spinner=False)
def rank_aggregate(model_key: str, data_key: str, count: int, block: str, _loaded: DashboardModel,
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
                    image_ids: Sequence[Any], labels: Sequence[int | None] | None = None,
                    predictions: Sequence[int] | None = None) -> bytes:
    """CSV bytes of prompt assignments, one row per layer, image and token (``write_assignments_csv``), with
    the image's ``label`` (empty for an upload) and the model's ``prediction`` appended to every row."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_assignments_csv(Path(tmp) / "assignments.csv", cls_assign, image_assign, layout,
                                     image_ids=list(image_ids))
        rows = list(csv.reader(io.StringIO(path.read_text())))
    position = {str(i): n for n, i in enumerate(image_ids)}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*rows[0], "label", "prediction"])
    for row in rows[1:]:
        n = position[row[1]]
        label = labels[n] if labels is not None else None
        prediction = predictions[n] if predictions is not None else None
        writer.writerow([*row, "" if label is None else label, "" if prediction is None else prediction])
    return out.getvalue().encode()
