"""Attention after the TCPA mask and its gradient with respect to a target logit, for every block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tcpa_core import intervene
from tcpa_core.model import PromptedViT

from .base import Target, resolve_target


@contextmanager
def retained_attention(model: PromptedViT) -> Iterator[dict[int, torch.Tensor]]:
    """While the block runs, every block's attention after the mask ``[B, H, Q, K]`` is kept in the yielded
    dict ``{layer: tensor}``. A hook on ``("attn", l)`` makes the block use the hooked tensor downstream
    (:func:`tcpa_core.intervene`), so the gradient of the target with respect to it is ``d target / d A'``.
    Restored on exit."""
    store: dict[int, torch.Tensor] = {}

    def keep(value: torch.Tensor, layer: int | None) -> None:
        assert layer is not None, "('attn', l) hook points are per block"
        store[layer] = value

    with intervene(model, hooks={("attn", layer): keep for layer in range(model.depth)}):
        yield store


def attention_gradients(
    model: PromptedViT, images: torch.Tensor, target: Target
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One forward and one backward pass of the target logits.

    Returns per block (first first) the attention after the mask ``[B, H, Q, K]`` and its gradient (same
    shape), the logits ``[B, C]`` and the targets ``[B]``; all detached. Images of one batch do not
    interact (eval mode), so backpropagating the sum of every image's target logit gives each image its
    own gradient. The backward pass (``torch.autograd.grad`` with the attention tensors as inputs) runs
    only the part of the graph between the logits and the attention: no gradient of the parameters, of
    the images or of the layers before the first block's attention is computed.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), retained_attention(model) as store:
        logits = model(x)
        t = resolve_target(target, logits)
        layers = sorted(store)
        if len(layers) != model.depth or not all(store[layer].requires_grad for layer in layers):
            raise RuntimeError(f"the captured attention of method {model.config.method!r} is not part of the "
                               "graph of the logits.")
        grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), [store[layer] for layer in layers],
                                    allow_unused=True)
    missing = [layer for layer, grad in zip(layers, grads, strict=True) if grad is None]
    if missing:
        raise RuntimeError(
            f"no gradient reached the captured attention of blocks {missing} for method {model.config.method!r}."
        )
    attn = [store[layer].detach() for layer in layers]
    return attn, [grad.detach() for grad in grads if grad is not None], logits.detach(), t
