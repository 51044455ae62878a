"""Attributions of prompted ViTs (``explain``), their faithfulness (``faithfulness``) and the explain report.

Methods (registry :data:`EXPLAINERS`, one module each): ``relevance`` (Chefer et al. 2021 on the attention
after the TCPA mask, relevance that reaches prompt columns kept in ``.prompts``), ``rollout``,
``attention`` (last block) and ``integrated-gradients`` (Captum).
"""

from . import relevance, rollout, attention, integrated_gradients  # noqa: F401, I001  (registry order)
from .base import (
    EXPLAINERS,
    Explainer,
    Explanation,
    ExplanationError,
    explain,
    get_explainer,
    list_explainers,
    register_explainer,
)
from .faithfulness import CURVES, FaithfulnessResult, box_scores, faithfulness, fill_images
from .propagation import propagate_row, split_columns
from .relevance import gradient_weighted_attention

__all__ = [
    "EXPLAINERS", "Explainer", "Explanation", "ExplanationError", "explain", "get_explainer", "list_explainers",
    "register_explainer", "propagate_row", "split_columns", "gradient_weighted_attention",
    "CURVES", "FaithfulnessResult", "box_scores", "faithfulness", "fill_images",
]
