"""Explanation maps and deletion curves of one image for the Attention view (``st.cache_data``), computed with
:func:`tcpa_viz.explain` and :func:`tcpa_viz.faithfulness` under the model's lock."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from app.loading.data import PreparedImage
from app.loading.models import LoadedModel
from tcpa_viz import explain, faithfulness

DELETION_STEPS = 8


@dataclass(frozen=True)
class ImageExplanation:
    """One model's explanation of one image: ``patches [h, w]``, the share of relevance on prompt keys
    (``None`` when the method reports none), the explained class, and the deletion curves ``[steps + 1]``
    (relevance order and one random order) over ``fractions`` with their AUC."""

    method: str
    target: int
    patches: np.ndarray
    prompt_share: float | None
    fractions: np.ndarray
    deletion: np.ndarray
    deletion_random: np.ndarray
    deletion_auc: float
    deletion_random_auc: float


@st.cache_data(max_entries=24, show_spinner=False)
def explain_image(model_key: str, image_key: str, method: str, target: int | None, _loaded: LoadedModel,
                  _image: PreparedImage) -> ImageExplanation:
    """Explain the image with ``method`` for ``target`` (``None``: the predicted class), and its deletion
    curve (blur fill, :data:`DELETION_STEPS` steps, one random order as the baseline)."""
    images = _image.tensor if _image.tensor.ndim == 4 else _image.tensor[None]
    with _loaded.lock:
        result = explain(_loaded.model, images, target=target, method=method)
        faith = faithfulness(_loaded.model, images, result, steps=DELETION_STEPS, random_orders=1, seed=0)
    patches = result.patches[0].detach().double().cpu().numpy()
    share = None
    if result.prompts is not None:
        prompts = float(result.prompts[0].detach().double().abs().sum())
        total = prompts + float(np.abs(patches).sum())
        share = prompts / total if total > 0 else 0.0
    return ImageExplanation(
        method=method, target=int(result.target[0]), patches=patches, prompt_share=share,
        fractions=faith.fractions.double().cpu().numpy(), deletion=faith.curves["deletion"][0].double().cpu().numpy(),
        deletion_random=faith.curves["deletion_random"][0].double().cpu().numpy(),
        deletion_auc=float(faith.auc["deletion"][0]), deletion_random_auc=float(faith.auc["deletion_random"][0]))
