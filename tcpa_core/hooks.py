"""Hook points: identity modules where the model exposes intermediate values, to record and to replace them.

Every hook point sits *before* its value is used: what a hook returns replaces the value downstream
(TransformerLens style). Two kinds of callbacks run on a ``HookPoint``:

* edits (``HookPoint.add_edit``, used by :func:`tcpa_core.intervene`): ``fn(value) -> replacement or None``,
  run in the order they were added, each seeing the previous one's result;
* ordinary PyTorch forward hooks (``register_forward_hook``, used by :func:`tcpa_core.capture`): they run
  after the edits and therefore record the value the model actually uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Edit = Callable[[Any], Any]

#: Per-block hook points, in the order a TCPA block reaches them. Shapes (``Np`` patches, ``Q`` = prefix +
#: patches queries, ``K`` = prefix + prompts + patches keys, ``P`` prompt columns of the block):
BLOCK_HOOKS: dict[str, str] = {
    "resid_pre": "[B, prefix+Np, D] block input (residual stream; VPT-shallow also carries its prompts)",
    "cls_sim": "[B, 1, Nc] cosine similarity of the CLS token to the CLS-pool keys (token matching only)",
    "sim": "[B, Np, Ni] cosine similarity of every patch token to the image-pool keys (token matching only)",
    "cls_assign": "[B, Kc] CLS-pool entries selected by the CLS token, before the mask is built",
    "image_assign": "[B, Np, Ki] image-pool entries selected by every patch token, before the mask is built",
    "prompt_columns": "[B or 1, Q, P] bool: which prompt key columns each query may see (methods with pools)",
    "prompts": "[B or 1, P, D] the prompt sequence of the block (after the Fourier transform)",
    "attn_raw": "[B, H, Q, K] attention before the mask (capture path)",
    "mask": "[B, Q, K] bool mask (capture path)",
    "attn": "[B, H, Q, K] attention after the mask, the one multiplied with the values (capture path)",
}
#: Model-level hook points (no layer).
MODEL_HOOKS: dict[str, str] = {"features": "[B, D] pre-logits features (what the head sees)"}
#: Hook points whose use makes a block take the explicit (capture) attention path.
ATTENTION_HOOKS: tuple[str, ...] = ("attn_raw", "mask", "attn")


class HookPoint(nn.Module):
    """Identity module with replaceable output.

    ``forward(value)`` runs the edits (each may return a replacement) and returns the final value; forward
    hooks registered by ``capture`` see that final value.
    """

    def __init__(self) -> None:
        super().__init__()
        self._edits: list[Edit] = []

    def forward(self, value: Any) -> Any:
        for edit in self._edits:
            replaced = edit(value)
            if replaced is not None:
                value = replaced
        return value

    def add_edit(self, fn: Edit) -> Callable[[], None]:
        """Add ``fn(value) -> replacement or None``; returns a function that removes it again."""
        self._edits.append(fn)

        def remove() -> None:
            for i, edit in enumerate(self._edits):
                if edit is fn:
                    del self._edits[i]
                    return

        return remove

    @property
    def active(self) -> bool:
        """True while at least one forward hook or edit is attached."""
        return bool(self._forward_hooks) or bool(self._edits)


class BlockHooks(nn.Module):
    """The hook points of one block (names and shapes in :data:`BLOCK_HOOKS`)."""

    NAMES: tuple[str, ...] = tuple(BLOCK_HOOKS)

    def __init__(self) -> None:
        super().__init__()
        for name in self.NAMES:
            self.add_module(name, HookPoint())

    def point(self, name: str) -> HookPoint:
        module = getattr(self, name)
        assert isinstance(module, HookPoint)
        return module

    @property
    def wants_attention(self) -> bool:
        """True when an attention hook is attached: the block then computes explicit attention matrices."""
        return any(self.point(name).active for name in ATTENTION_HOOKS)


@dataclass(frozen=True)
class BlockEdit:
    """What :func:`tcpa_core.intervene` changes in one block with prompt pools.

    masked:   pool -> entries whose prompt key columns are 0 in the mask for every query (still in the softmax)
    removed:  pool -> entries that leave the pool (not selectable, their keys not in the softmax)
    selection: ``"topk"`` | ``"random"`` | ``"shared"`` | ``"all"``, or None for the model's own rule
    seed:     seed of the ``"random"`` rule (the picks depend only on seed, block and pool)
    Pools are ``"cls"`` and ``"image"``.
    """

    masked: dict[str, frozenset[int]] = field(default_factory=dict)
    removed: dict[str, frozenset[int]] = field(default_factory=dict)
    selection: str | None = None
    seed: int = 0

    def entries(self, kind: str, pool: str) -> frozenset[int]:
        table = self.masked if kind == "masked" else self.removed
        return table.get(pool, frozenset())

    def removed_entries(self, pool: str, size: int, device: torch.device) -> torch.Tensor | None:
        """[size] bool, True for removed entries of ``pool``; None when none is removed."""
        entries = self.removed.get(pool)
        if not entries:
            return None
        flags = torch.zeros(size, dtype=torch.bool, device=device)
        flags[list(entries)] = True
        return flags

    def column_flags(self, kind: str, pool_sizes: tuple[int, int], prompt_length: int,
                     device: torch.device) -> torch.Tensor | None:
        """[P] bool over the block's prompt columns (CLS pool, then image pool), True on the columns of the
        ``kind`` (``"masked"`` or ``"removed"``) entries; None when there are none."""
        if not self.entries(kind, "cls") and not self.entries(kind, "image"):
            return None
        parts = []
        for pool, size in zip(("cls", "image"), pool_sizes, strict=True):
            flags = torch.zeros(size, dtype=torch.bool, device=device)
            chosen = self.entries(kind, pool)
            if chosen:
                flags[list(chosen)] = True
            parts.append(flags.repeat_interleave(prompt_length))
        return torch.cat(parts)

    def merged(self, inner: BlockEdit) -> BlockEdit:
        """This edit with ``inner`` (a nested intervention) applied on top of it."""
        def union(a: dict[str, frozenset[int]], b: dict[str, frozenset[int]]) -> dict[str, frozenset[int]]:
            return {pool: a.get(pool, frozenset()) | b.get(pool, frozenset()) for pool in {*a, *b}}

        return BlockEdit(
            masked=union(self.masked, inner.masked), removed=union(self.removed, inner.removed),
            selection=inner.selection if inner.selection is not None else self.selection,
            seed=inner.seed if inner.selection is not None else self.seed,
        )
