"""Attention rollout (Abnar & Zuidema, 2020) over the token-token part of captured attention.

Rollout multiplies per-layer attention matrices (with the residual connection added as identity) to
trace how much each output token draws on each input token. Prompts are not tokens that flow from layer
to layer (their outputs are discarded after each block), so only the ``[prefix | patches] x
[prefix | patches]`` block of each layer is used. Its rows sum to less than one: part of the mass went
to prompt columns, and under TCPA the unselected prompts' mass was removed by the mask. ``missing_mass``
chooses what to do with that deficit:

``"renormalize"`` (default)
    divide each row of the block by its sum, i.e. describe only the token-to-token flow as if prompts
    did not exist. Rows are stochastic, so rollout rows keep summing to one and maps of different
    methods are comparable.
``"self"``
    give the deficit to the diagonal: what a token took from prompts (or lost to the mask) is treated as
    information that stays with that token. Rows are stochastic.
``"drop"``
    keep the deficit: rows stay sub-stochastic and the rollout total shrinks layer by layer, measuring
    the share of the output that still traces back to input tokens rather than to prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import torch

from .errors import AnalysisArgumentError
from .tokens import HeadReduction, QuerySpec, check_attention, reduce_heads, resolve_query, to_grid

if TYPE_CHECKING:
    from tcpa_core.layout import TokenLayout

MissingMass = Literal["renormalize", "self", "drop"]


def token_token_block(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Columns of the token keys (prefix, patches) of ``[..., query, key]`` -> ``[..., T, T]``.

    ``T = num_prefix + num_patches``; row ``i`` and column ``i`` refer to the same token.
    """
    ks = layout.key_slices()
    return torch.cat([attn[..., ks["prefix"]], attn[..., ks["patches"]]], dim=-1)


def _ordered_layers(attns: Mapping[int, torch.Tensor] | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(attns, Mapping):
        return [attns[k] for k in sorted(attns)]
    return list(attns)


def attention_rollout(
    attns: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
    layout: TokenLayout,
    heads: HeadReduction = "mean",
    missing_mass: MissingMass = "renormalize",
    residual: float = 0.5,
) -> torch.Tensor:
    """Roll attention out through the layers, first layer first.

    Args:
        attns: per-layer attention ``[batch, head, query, key]`` as a sequence in depth order or a
            mapping ``layer -> tensor`` (sorted by key). Pass a subset to start later in the network.
        layout: the token layout of every layer.
        heads: head reduction per layer (the original method uses ``"mean"``).
        missing_mass: what to do with each row's deficit (see the module docstring).
        residual: weight of the identity mixed into each layer, ``A_hat = (1-residual) A + residual I``.

    Returns:
        ``[batch, T, T]`` float64 rollout, ``T = num_prefix + num_patches``: row = output token,
        column = input token, both in ``[prefix | patches]`` order.
    """
    layers = _ordered_layers(attns)
    if not layers:
        raise AnalysisArgumentError("attention rollout needs at least one layer")
    if not 0.0 <= residual <= 1.0:
        raise AnalysisArgumentError(f"residual must be in [0, 1], got {residual}")
    if missing_mass not in ("renormalize", "self", "drop"):
        raise AnalysisArgumentError(f"missing_mass must be 'renormalize', 'self' or 'drop', got {missing_mass!r}")
    def layer_matrix(attn: torch.Tensor) -> torch.Tensor:
        a = token_token_block(reduce_heads(check_attention(attn, layout), heads).double(), layout)
        eye = torch.eye(a.shape[-1], dtype=a.dtype)
        sums = a.sum(dim=-1, keepdim=True)
        if missing_mass == "renormalize":
            a = a / sums.clamp_min(torch.finfo(a.dtype).tiny)
        elif missing_mass == "self":
            a = a + eye * (1.0 - sums).clamp_min(0.0)
        return (1.0 - residual) * a + residual * eye

    result = layer_matrix(layers[0])
    for attn in layers[1:]:
        result = layer_matrix(attn) @ result
    return result


def rollout_map(rollout: torch.Tensor, layout: TokenLayout, query: QuerySpec) -> torch.Tensor:
    """Patch-grid map ``[batch, h, w]`` of one output token's rollout row (its prefix columns left out)."""
    q = resolve_query(layout, query)
    return to_grid(rollout[:, q, layout.num_prefix:], layout)
