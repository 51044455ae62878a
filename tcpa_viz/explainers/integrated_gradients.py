"""Integrated gradients (Sundararajan et al. 2017) through Captum, summed over each patch's pixels and channels.

The baseline input defaults to zeros in normalised space, i.e. the per-channel mean colour the images were
normalised with (a flat mean-colour image); pass ``baseline=`` (a tensor broadcastable to the images) to
change it. Captum's Gauss-Legendre rule with ``n_steps`` points (default 32) integrates the gradient;
``extras["convergence_delta"]`` ``[B]`` is Captum's completeness error
``sum(attributions) - (f(x) - f(baseline))``. Attributions are on the input pixels, so ``.prompts`` and
``.prefix`` are ``None`` (prompts are parameters, not inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Explainer, Explanation, ExplanationError, Target, register_explainer, resolve_target


@register_explainer
class IntegratedGradientsExplainer(Explainer):
    name = "integrated-gradients"
    description = "Captum integrated gradients from a mean-colour baseline, summed per patch"

    def explain_batch(self, images: torch.Tensor, target: Target) -> Explanation:
        layout = self.layout(images)
        with torch.inference_mode():
            logits = self.model(images)
        t = resolve_target(target, logits)
        baseline = torch.as_tensor(self.options.get("baseline", 0.0), dtype=images.dtype, device=images.device)
        n_steps = int(self.options.get("n_steps", 32))
        internal = int(self.options.get("internal_batch_size", 256))
        from captum.attr import IntegratedGradients  # imported here: captum.attr imports matplotlib.pyplot

        ig = IntegratedGradients(self.model)
        attr, delta = ig.attribute(images, baselines=baseline.expand_as(images), target=t, n_steps=n_steps,
                                   internal_batch_size=max(internal, len(images)), return_convergence_delta=True)
        pixels = attr.detach().double().sum(dim=1, keepdim=True)
        patch = tuple(int(s) for s in self.model.backbone.patch_embed.patch_size)
        patches = F.avg_pool2d(pixels, patch, stride=patch)[:, 0] * (patch[0] * patch[1])
        if tuple(patches.shape[-2:]) != layout.grid_size:
            raise ExplanationError(f"pixel grid {tuple(patches.shape[-2:])} does not match the patch grid "
                                   f"{layout.grid_size} (image size not a multiple of the patch size)")
        return Explanation(method=self.name, patches=patches.float(), prompts=None, target=t, logits=logits,
                           layout=layout, extras={"convergence_delta": delta.detach()})
