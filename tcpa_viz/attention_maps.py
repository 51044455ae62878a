"""Per-token attention maps: one query row split into patch grid, prompt groups and prefix.

Under TCPA the captured attention is ``softmax(q k^T) * mask`` without renormalisation, so a row sums
to less than one. :func:`token_attention` never renormalises and never drops a column: the patch
grid, the prompt weights of every prompt group and the prefix weights together add up to the row sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .errors import AnalysisArgumentError, AnalysisIndexError
from .tokens import (
    PROMPT_GROUPS,
    HeadReduction,
    QuerySpec,
    check_attention,
    pool_entry_columns,
    query_labels,
    reduce_heads,
    resolve_query,
    to_grid,
)

if TYPE_CHECKING:
    from tcpa_core.layout import TokenLayout


@dataclass
class TokenAttention:
    """Where one query token puts its attention, split by key group.

    Attributes:
        grid: ``[batch, h, w]`` weights on the patch keys, arranged on the patch grid.
        prompt_weights: group name (``cls_prompts``, ``image_prompts``, ``prompts``) -> ``[batch, n_keys]``
            weights on that group's key columns; every group is present, with zero width when unused.
        prefix_weights: ``[batch, num_prefix]`` weights on the prefix keys (CLS first, then registers).
        row_sum: ``[batch]`` sum of the (head-reduced) attention row over all keys.
        query_index: query row of the token.
        query_label: its label (``CLS``, ``reg0``, ``patch(r,c)``).
        heads: the head reduction used.
        prompt_length: columns per pool entry (to group pool columns by entry).
    """

    grid: torch.Tensor
    prompt_weights: dict[str, torch.Tensor]
    prefix_weights: torch.Tensor
    row_sum: torch.Tensor
    query_index: int
    query_label: str
    heads: HeadReduction
    prompt_length: int = 1

    @property
    def cls_weight(self) -> torch.Tensor:
        """``[batch]`` weight on the first prefix key (the CLS token when the model has one)."""
        return self.prefix_weights[:, 0]

    def prompt_total(self) -> torch.Tensor:
        """``[batch]`` total weight on all prompt columns."""
        return sum((w.sum(dim=-1) for w in self.prompt_weights.values()), torch.zeros_like(self.row_sum))

    def group_totals(self) -> dict[str, torch.Tensor]:
        """Group name -> ``[batch]`` total weight (``prefix``, each prompt group, ``patches``)."""
        totals = {"prefix": self.prefix_weights.sum(dim=-1)}
        totals.update({name: w.sum(dim=-1) for name, w in self.prompt_weights.items()})
        totals["patches"] = self.grid.flatten(1).sum(dim=-1)
        return totals

    def pool_entry_weights(self, group: str) -> torch.Tensor:
        """``[batch, entries]`` weight per pool entry of ``group`` (its ``prompt_length`` columns summed)."""
        w = self.prompt_weights[group]
        lp = max(self.prompt_length, 1)
        return w.reshape(w.shape[0], -1, lp).sum(dim=-1)


def token_attention(
    attn: torch.Tensor, layout: TokenLayout, query: QuerySpec, heads: HeadReduction = "mean"
) -> TokenAttention:
    """Split the attention row of ``query`` into patch grid, prompt-group and prefix weights.

    Args:
        attn: ``[batch, head, query, key]`` attention of one layer (after the TCPA mask for TCPA models).
        layout: the token layout captured with it.
        query: ``"cls"``, ``"register:<i>"``, ``(row, col)`` of a patch, or a raw query row index.
        heads: ``"mean"``, ``"max"`` or a head index. With ``"max"`` the parts still add up to the row sum
            of the element-wise head maximum, which is not a probability mass.

    Returns:
        A :class:`TokenAttention` whose ``grid`` is ``[batch, h, w]``.
    """
    attn = check_attention(attn, layout)
    q = resolve_query(layout, query)
    row = reduce_heads(attn[:, :, q : q + 1, :], heads)[:, 0, :]
    ks = layout.key_slices()
    return TokenAttention(
        grid=to_grid(row[:, ks["patches"]], layout),
        prompt_weights={name: row[:, ks[name]] for name in PROMPT_GROUPS},
        prefix_weights=row[:, ks["prefix"]],
        row_sum=row.sum(dim=-1),
        query_index=q,
        query_label=query_labels(layout)[q],
        heads=heads,
        prompt_length=max(int(layout.prompt_length), 1),
    )


def key_column_map(
    attn: torch.Tensor,
    layout: TokenLayout,
    group: str,
    index: int,
    heads: HeadReduction = "mean",
    pool_entry: bool = False,
) -> torch.Tensor:
    """Attention every patch puts on one non-patch key ("a prompt column seen from the patches").

    Args:
        attn: ``[batch, head, query, key]`` attention of one layer.
        layout: its token layout.
        group: ``"cls_prompts"``, ``"image_prompts"``, ``"prompts"`` or ``"prefix"``.
        index: column index inside the group (0-based), or the pool entry when ``pool_entry`` is set.
        heads: head reduction (see :func:`tcpa_viz.tokens.reduce_heads`).
        pool_entry: for the two TCPA pools, sum the ``prompt_length`` columns of pool entry ``index``.

    Returns:
        ``[batch, h, w]`` patch-grid map. Under TCPA, patches that did not select the entry show 0, and
        for ``cls_prompts`` every patch shows 0 (patches never see the CLS pool).
    """
    attn = check_attention(attn, layout)
    ks = layout.key_slices()
    if group not in ks or group == "patches":
        raise AnalysisArgumentError(f"group must be one of prefix, {', '.join(PROMPT_GROUPS)}; got {group!r}")
    if pool_entry:
        cols = pool_entry_columns(layout, group, index)
    else:
        s = ks[group]
        if not 0 <= index < s.stop - s.start:
            raise AnalysisIndexError(f"{group} has {s.stop - s.start} key columns; index {index} is outside them")
        cols = slice(s.start + index, s.start + index + 1)
    patch_rows = layout.query_slices()["patches"]
    per_head = attn[:, :, patch_rows, cols].sum(dim=-1, keepdim=True)
    values = reduce_heads(per_head, heads)[..., 0]
    return to_grid(values, layout)
