"""Predictions of a model on a data split (``st.cache_data``, computed once per model, split and image set
under the model's lock) and what the Models view derives from them: confusion matrix, per-class accuracy and
the classes whose confusion rows differ between two models."""

from __future__ import annotations

import numpy as np
import streamlit as st
from torch.utils.data import Dataset, Subset

from app.loading.captures import BATCH_SIZE
from app.loading.models import DashboardModel
from tcpa_core.train import evaluate
from tcpa_viz.figures.common import labels_of


@st.cache_data(max_entries=8, show_spinner=False)
def split_predictions(model_key: str, data_key: str, split: str, indices: tuple[int, ...], _loaded: DashboardModel,
                      _dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``[N]`` and the model's predictions ``[N]`` on the images ``indices`` of the split ``split``
    (``tcpa_core.train.evaluate``: eval mode, top-k prompt selection)."""
    subset = Subset(_dataset, list(indices))
    with _loaded.lock:
        result = evaluate(_loaded.model, subset, batch_size=BATCH_SIZE, return_predictions=True)
    assert result.predictions is not None
    return np.asarray(labels_of(subset), dtype=np.int64), result.predictions.numpy().astype(np.int64)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` counts: row = true class, column = predicted class.

    One ``np.bincount`` over ``label * C + prediction`` (scikit-learn's ``confusion_matrix`` gives the same
    counts and is the independent check of the tests; this keeps classes absent from both arrays as zero rows
    without building the label list)."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """``[C]`` share of each true class's images predicted as that class (the diagonal over the row sums);
    ``nan`` for a class without images."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


def differing_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Indices of the true classes whose confusion rows (counts per predicted class) are not identical in the
    two ``[C, C]`` matrices of the same images."""
    if first.shape != second.shape:
        raise ValueError(f"confusion matrices of different shapes: {first.shape} and {second.shape}")
    return np.flatnonzero(np.any(first != second, axis=1))
