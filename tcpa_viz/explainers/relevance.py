"""Gradient-weighted attention relevance (Chefer et al. 2021) through the attention after the TCPA mask.

Per block ``Abar_l = mean_h((dy_t/dA'_l * A'_l)^+)`` ``[B, T, K]`` with ``A'`` the attention after the mask
and ``y_t`` the target logit; the token/prompt propagation is :mod:`tcpa_viz.explainers.propagation`.
For the model without prompts this is the published rule ``R <- R + Abar R`` on the timm ViT.
"""

from __future__ import annotations

import torch

from .base import Explainer, Explanation, Target, readout_row, register_explainer
from .gradients import attention_gradients
from .propagation import propagate_row, token_explanation


def gradient_weighted_attention(attn: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``mean_h((grad * attn)^+)``: ``[B, H, Q, K]`` x 2 -> ``[B, Q, K]``."""
    return (grad * attn).clamp_min(0).mean(dim=1)


@register_explainer
class RelevanceExplainer(Explainer):
    name = "relevance"
    description = "gradient-weighted attention relevance (Chefer et al. 2021) after the TCPA mask, prompts kept"

    def explain_batch(self, images: torch.Tensor, target: Target) -> Explanation:
        layout = self.layout(images)
        attn, grads, logits, t = attention_gradients(self.model, images, target)
        layers = [gradient_weighted_attention(a, g) for a, g in zip(attn, grads, strict=True)]
        tokens, prompts = propagate_row(layers, layout, readout_row(self.model, layout))
        return token_explanation(self.name, tokens, prompts, t, logits, layout)

