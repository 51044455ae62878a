"""Attention rollout (Abnar & Zuidema 2020) over the attention after the TCPA mask, prompt mass kept.

Each block contributes ``A_hat = (1 - a) mean_h(A') + a I`` (``a = residual``, identity on the token
columns only) and the readout row is rolled back through the blocks with the token/prompt split of
:mod:`tcpa_viz.explainers.propagation`. Rows are not renormalised (``missing_mass="drop"`` of
:func:`tcpa_viz.attention_rollout`, whose patch map this equals): the share that went to prompt columns
is reported in ``.prompts`` and the share TCPA's mask removed is simply absent. Not class-specific.
"""

from __future__ import annotations

import torch

from tcpa_core import capture

from .base import Explainer, Explanation, Target, readout_row, register_explainer, resolve_target
from .propagation import propagate_row, token_explanation


@register_explainer
class RolloutExplainer(Explainer):
    name = "rollout"
    description = "attention rollout (identity-mixed, not renormalised); prompt mass reported"

    def explain_batch(self, images: torch.Tensor, target: Target) -> Explanation:
        residual = float(self.options.get("residual", 0.5))
        layout = self.layout(images)
        with torch.inference_mode(), capture(self.model, names=["attn"]) as cache:
            logits = self.model(images)
        layers = [(1.0 - residual) * cache["attn", layer].mean(dim=1) for layer in cache.layers("attn")]
        tokens, prompts = propagate_row(layers, layout, readout_row(self.model, layout), identity=residual)
        return token_explanation(self.name, tokens, prompts, resolve_target(target, logits), logits, layout)
