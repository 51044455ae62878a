"""Token indexing helpers shared by the visualisations: head reduction, query lookup, labels, groups.

Captured attention is ``[batch, head, query, key]`` with queries ``[prefix | patches]`` and keys
``[prefix | cls_prompts | image_prompts | prompts | patches]`` as described by
:class:`tcpa_core.layout.TokenLayout`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from tcpa_core.errors import InputShapeError

from .errors import AnalysisArgumentError, AnalysisIndexError

if TYPE_CHECKING:
    from tcpa_core.layout import TokenLayout

HeadReduction = Literal["mean", "max"] | int
"""How to combine heads: ``"mean"`` (average), ``"max"`` (element-wise maximum) or one head index."""

QuerySpec = str | int | tuple[int, int]
"""A query token: ``"cls"``, ``"register:<i>"`` (i-th register token, 0-based), ``(row, col)`` for a
patch on the grid, or an ``int`` raw query row index."""

PROMPT_GROUPS: tuple[str, ...] = ("cls_prompts", "image_prompts", "prompts")
"""Key groups holding prompt columns, in key order."""

GROUP_TITLES: dict[str, str] = {
    "prefix": "prefix",
    "cls_prompts": "CLS prompts",
    "image_prompts": "image prompts",
    "prompts": "prompts",
    "patches": "patches",
}
"""Human-readable names of the token groups, used in plot labels."""


def to_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return ``x`` as a detached CPU tensor (numpy arrays are converted without copying when possible)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.as_tensor(np.asarray(x))


def to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return ``x`` as a numpy array (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_attention(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Validate captured attention ``[batch, head, query, key]`` against ``layout``; return it as a tensor."""
    attn = to_tensor(attn)
    if attn.ndim != 4:
        raise InputShapeError(
            f"attention must be [batch, head, query, key], got shape {tuple(attn.shape)}; "
            "add the missing batch/head dimension with unsqueeze."
        )
    q, k = attn.shape[-2:]
    if (q, k) != (layout.num_queries, layout.num_keys):
        raise InputShapeError(
            f"attention has {q} queries x {k} keys but the token layout expects "
            f"{layout.num_queries} x {layout.num_keys} (prefix={layout.num_prefix}, "
            f"prompts={layout.num_prompt_keys}, grid={layout.grid_size}); pass the layout captured with it."
        )
    return attn


def reduce_heads(attn: torch.Tensor, heads: HeadReduction = "mean") -> torch.Tensor:
    """Combine the head dimension of ``[batch, head, query, key]`` into ``[batch, query, key]``.

    ``"mean"`` keeps row sums (the mean of per-head row sums); ``"max"`` takes the element-wise maximum,
    whose rows no longer sum to a probability mass; an ``int`` selects one head (negative indices allowed).
    """
    attn = to_tensor(attn)
    if attn.ndim != 4:
        raise InputShapeError(f"expected [batch, head, query, key], got shape {tuple(attn.shape)}")
    if isinstance(heads, str):
        if heads == "mean":
            return attn.mean(dim=1)
        if heads == "max":
            return attn.amax(dim=1)
        raise AnalysisArgumentError(f"heads must be 'mean', 'max' or a head index, got {heads!r}")
    if isinstance(heads, (int, np.integer)) and not isinstance(heads, bool):
        n = attn.shape[1]
        if not -n <= int(heads) < n:
            raise AnalysisIndexError(f"head {heads} is out of range for {n} heads")
        return attn[:, int(heads)]
    raise AnalysisArgumentError(f"heads must be 'mean', 'max' or a head index, got {heads!r}")


def resolve_query(layout: TokenLayout, query: QuerySpec) -> int:
    """Query row index of ``query`` (see :data:`QuerySpec`)."""
    if isinstance(query, str):
        name = query.strip().lower()
        if name == "cls":
            if not layout.has_cls_token:
                raise AnalysisArgumentError("this model has no CLS token; choose a patch (row, col) or a register")
            return 0
        if name.startswith("register:") or name.startswith("reg:"):
            idx = int(name.split(":", 1)[1])
            if not 0 <= idx < layout.num_registers:
                raise AnalysisIndexError(f"register {idx} does not exist; the model has {layout.num_registers}")
            return int(layout.has_cls_token) + idx
        raise AnalysisArgumentError(f"unknown query {query!r}; use 'cls', 'register:<i>', (row, col) or a row index")
    if isinstance(query, tuple):
        if len(query) != 2:
            raise AnalysisArgumentError(f"a patch query is (row, col), got {query!r}")
        return layout.patch_query_index(int(query[0]), int(query[1]))
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool):
        if not 0 <= int(query) < layout.num_queries:
            raise AnalysisIndexError(f"query row {query} is outside 0..{layout.num_queries - 1}")
        return int(query)
    raise AnalysisArgumentError(f"unknown query {query!r}; use 'cls', 'register:<i>', (row, col) or a row index")


def query_labels(layout: TokenLayout) -> list[str]:
    """One label per query row: ``CLS``, ``reg0``.., then ``patch(r,c)`` in row-major grid order."""
    labels: list[str] = []
    if layout.has_cls_token:
        labels.append("CLS")
    labels += [f"reg{i}" for i in range(layout.num_registers)]
    w = layout.grid_size[1]
    labels += [f"patch({i // w},{i % w})" for i in range(layout.num_patches)]
    return labels


def query_label(layout: TokenLayout, query: QuerySpec) -> str:
    """Label of one query (see :func:`query_labels`)."""
    return query_labels(layout)[resolve_query(layout, query)]


def key_labels(layout: TokenLayout) -> list[str]:
    """One label per key column: prefix labels, ``clsP<entry>``/``imgP<entry>`` (``.<t>`` suffix for
    prompt_length > 1), ``P<i>`` for shared prompts, then ``patch(r,c)``."""
    q = query_labels(layout)
    labels = q[: layout.num_prefix]
    lp = max(int(layout.prompt_length), 1)
    for tag, n in (("clsP", layout.num_cls_prompt_keys), ("imgP", layout.num_image_prompt_keys)):
        for j in range(n):
            labels.append(f"{tag}{j // lp}" if lp == 1 else f"{tag}{j // lp}.{j % lp}")
    labels += [f"P{i}" for i in range(layout.num_shared_prompt_keys)]
    labels += q[layout.num_prefix:]
    return labels


def nonempty_groups(slices: dict[str, slice]) -> list[tuple[str, slice]]:
    """The ``(name, slice)`` pairs of ``slices`` whose group has at least one index."""
    return [(name, s) for name, s in slices.items() if s.stop > s.start]


def pool_entry_columns(layout: TokenLayout, group: str, entry: int) -> slice:
    """Key columns owned by pool ``entry`` of ``group`` (``prompt_length`` columns per entry)."""
    if group not in ("cls_prompts", "image_prompts"):
        raise AnalysisArgumentError(f"pool entries exist only for 'cls_prompts' and 'image_prompts', got {group!r}")
    lp = max(int(layout.prompt_length), 1)
    s = layout.key_slices()[group]
    n_entries = (s.stop - s.start) // lp
    if not 0 <= entry < n_entries:
        raise AnalysisIndexError(f"{group} entry {entry} is outside 0..{n_entries - 1}")
    return slice(s.start + entry * lp, s.start + (entry + 1) * lp)


def to_grid(values: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Reshape per-patch values ``[..., num_patches]`` into the patch grid ``[..., h, w]`` (row-major)."""
    values = to_tensor(values)
    if values.shape[-1] != layout.num_patches:
        raise InputShapeError(
            f"expected {layout.num_patches} patch values (grid {layout.grid_size}), got {values.shape[-1]}"
        )
    return values.reshape(*values.shape[:-1], *layout.grid_size)
