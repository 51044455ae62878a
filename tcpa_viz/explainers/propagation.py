"""Propagating relevance through the rectangular attention of prompted ViTs (shared by relevance and rollout).

Captured attention of block ``l`` is ``[B, H, Q, K]`` with queries ``Q = T = prefix + patches`` and keys
``K = prefix + prompts + patches``. Relevance ``R`` lives on the tokens: ``R[i, j]`` is how much output
token ``i`` owes to input token ``j``. Prompts are key/value-only inputs of one block (TCPA and VPT-deep:
fresh prompts in every block whose outputs are discarded), so a prompt column is a *leaf*: information
that enters token ``i`` through it comes from no earlier token. The propagation therefore splits each
head-reduced layer matrix ``Abar_l`` ``[T, K]`` into its token columns ``Abar_l^tt`` ``[T, T]`` (prefix and
patch keys, the same tokens as the queries) and its prompt columns ``Abar_l^tp`` ``[T, P]`` and uses

    R_tok    <- R_tok + Abar_l^tt @ R_tok                      (Chefer et al. 2021; R_tok starts as I)
    R_prompt <- R_prompt + Abar_l^tt @ R_prompt, then R_prompt[:, l] += Abar_l^tp   (R_prompt starts at 0)

i.e. the published rule on the token set extended by every block's prompts, each prompt being an input
whose own relevance row is the identity and which is never a query. The relevance that reaches a prompt
column is accumulated in ``R_prompt`` per block and column (``prompts_per_layer``) and carried through
the later blocks exactly like token relevance; it is never dropped. Under TCPA the attention after the
mask is ``A' = A * M``, so ``Abar_l^tp[i, p] = 0`` wherever query ``i`` did not select column ``p``: an
unselected prompt contributes nothing through that query.

Only the row of the token the head reads is needed, so the computation runs backwards with a row
vector ``r`` (``O(L T^2)`` instead of ``O(L T^3)``): ``r <- readout``; for ``l = L..1``:
``prompts_l = r @ Abar_l^tp``; ``r <- r + r @ Abar_l^tt``. This equals the readout row of the forward
products above (associativity).

For VPT-shallow the prompts are tokens that run through every block, but only the prefix and patch
query rows are captured: the relevance reaching the prompt columns of block ``l`` is reported for that
block and not followed further back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .base import Explanation

if TYPE_CHECKING:
    from tcpa_core.layout import TokenLayout


def split_columns(matrix: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., T, K]`` -> token columns ``[..., T, T]`` (prefix then patches) and prompt columns ``[..., T, P]``."""
    ks = layout.key_slices()
    tokens = torch.cat([matrix[..., ks["prefix"]], matrix[..., ks["patches"]]], dim=-1)
    prompts = matrix[..., layout.num_prefix:layout.num_prefix + layout.num_prompt_keys]
    return tokens, prompts


def propagate_row(
    layers: Sequence[torch.Tensor], layout: TokenLayout, readout: torch.Tensor, identity: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of the readout row through ``layers`` (first block first), see the module docstring.

    Args:
        layers: per block ``[B, T, K]`` head-reduced layer matrices (``Abar_l``).
        layout: their token layout.
        readout: ``[T]`` or ``[B, T]`` weights of the query rows the head reads.
        identity: weight of the residual identity (``R <- identity * R + Abar @ R``); 1 for the Chefer rule.

    Returns:
        ``[B, T]`` relevance on the input tokens (prefix then patches) and ``[B, L, P]`` relevance that
        reached each block's prompt key columns, both float64.
    """
    batch = layers[0].shape[0]
    r = readout.to(device=layers[0].device, dtype=torch.float64).expand(batch, -1).clone()
    per_layer = []
    for matrix in reversed(layers):
        tokens, prompts = split_columns(matrix.double(), layout)
        per_layer.append(torch.einsum("bt,btp->bp", r, prompts))
        r = identity * r + torch.einsum("bt,bts->bs", r, tokens)
    return r, torch.stack(per_layer[::-1], dim=1)


def token_explanation(method: str, tokens: torch.Tensor, prompts: torch.Tensor, target: torch.Tensor,
                      logits: torch.Tensor, layout: TokenLayout) -> Explanation:
    """Explanation from propagated token relevance ``[B, T]`` and per-block prompt relevance ``[B, L, P]``
    (``prefix`` keeps the identity term of the readout token itself)."""
    n = layout.num_prefix
    has_prompts = layout.num_prompt_keys > 0
    return Explanation(
        method=method,
        patches=tokens[:, n:].float().reshape(-1, *layout.grid_size),
        prompts=prompts.sum(1).float() if has_prompts else None,
        prompts_per_layer=prompts.float() if has_prompts else None,
        prefix=tokens[:, :n].float(),
        target=target,
        logits=logits,
        layout=layout,
    )
