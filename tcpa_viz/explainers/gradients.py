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
    """While the block runs, every block's attention after the mask ``[B, H, Q, K]`` is kept (with
    ``retain_grad``) in the yielded dict ``{layer: tensor}``. A hook on ``("attn", l)`` makes the block use the
    hooked tensor downstream (:func:`tcpa_core.intervene`), so after ``backward`` its ``.grad`` is
    ``d target / d A'``. Restored on exit."""
    store: dict[int, torch.Tensor] = {}

    def keep(value: torch.Tensor, layer: int | None) -> None:
        assert layer is not None, "('attn', l) hook points are per block"
        value.retain_grad()
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
    own gradient.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), retained_attention(model) as store:
        logits = model(x)
        t = resolve_target(target, logits)
        logits.gather(1, t[:, None]).sum().backward()
    layers = sorted(store)
    grads = [store[layer].grad for layer in layers]
    missing = [layer for layer, grad in zip(layers, grads, strict=True) if grad is None]
    if missing or len(layers) != model.depth:
        raise RuntimeError(
            f"no gradient reached the captured attention of blocks {missing or 'all'} for method "
            f"{model.config.method!r}."
        )
    attn = [store[layer].detach() for layer in layers]
    model.zero_grad(set_to_none=True)
    return attn, [grad.detach() for grad in grads if grad is not None], logits.detach(), t
