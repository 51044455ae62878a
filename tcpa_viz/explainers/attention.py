"""Raw attention of the last block: the readout row of ``mean_h(A')`` (after the TCPA mask).

Patch columns give ``.patches``, prompt columns ``.prompts`` (the last block's only, also in
``prompts_per_layer[:, -1]``), prefix columns ``.prefix``. Not class-specific: ``target`` is only recorded.
"""

from __future__ import annotations

import torch

from tcpa_core import capture

from .base import Explainer, Explanation, Target, readout_row, register_explainer, resolve_target
from .propagation import split_columns, token_explanation


@register_explainer
class AttentionExplainer(Explainer):
    name = "attention"
    description = "last-block attention of the readout token (head mean, after the mask)"

    def explain_batch(self, images: torch.Tensor, target: Target) -> Explanation:
        layout = self.layout(images)
        last = self.model.depth - 1
        with torch.inference_mode(), capture(self.model, layers=[last], names=["attn"]) as cache:
            logits = self.model(images)
        row = readout_row(self.model, layout).to(images.device)
        weights = torch.einsum("t,btk->bk", row, cache["attn", last].double().mean(dim=1))
        tokens, prompts = split_columns(weights, layout)
        per_layer = torch.zeros(len(tokens), self.model.depth, prompts.shape[-1], dtype=prompts.dtype,
                                device=prompts.device)
        per_layer[:, -1] = prompts
        return token_explanation(self.name, tokens, per_layer, resolve_target(target, logits), logits, layout)
