"""Prompt-selection analysis of TCPA: pool usage, per-patch choice maps, entropy, diversity, CSV export.

Inputs are the captured assignments: ``cls_assign[l]`` ``[batch, cls_topk]`` and ``image_assign[l]``
``[batch, num_patches, image_topk]`` (pool entry indices). The core selects with ``torch.topk``, so each
token's list is ordered from the most to the least similar key; "top-1" below is the first entry.

Numbers per layer (:func:`selection_stats`):

- ``*_usage``: how often each pool entry was selected over the batch (all tokens, all top-k slots).
- ``*_entropy``: Shannon entropy of the usage distribution divided by ``log(pool_size)``: 1 = every entry
  used equally, 0 = a single entry used (``*_entropy_nats`` holds the raw value).
- ``*_entries_used``: number of entries selected at least once.
- ``image_jaccard``: mean pairwise Jaccard distance ``1 - |A & B| / |A | B|`` between the selected sets of
  the patch tokens of one image, averaged over images (0 = all tokens picked the same set).
- ``image_distinct_sets``: number of distinct selected sets among one image's patches, averaged over images;
  ``image_distinct_sets_batch`` counts them over all patches of the batch.
- ``cls_jaccard`` / ``cls_distinct_sets``: the same between the CLS tokens of the images of the batch.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tcpa_core.errors import InputShapeError

from .colors import categorical_colors
from .errors import AnalysisArgumentError, AnalysisIndexError
from .overlay import as_rgb_uint8
from .tokens import query_labels, to_numpy, to_tensor

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.axes import Axes

    from tcpa_core.layout import TokenLayout

GridMode = Literal["top1", "set"]
PoolName = Literal["cls", "image"]


def pool_sizes(layout: TokenLayout) -> tuple[int, int]:
    """``(cls_pool_size, image_pool_size)`` from the layout's prompt columns and prompt length."""
    lp = max(int(layout.prompt_length), 1)
    return layout.num_cls_prompt_keys // lp, layout.num_image_prompt_keys // lp


def pool_usage(assign: torch.Tensor | np.ndarray, pool_size: int) -> np.ndarray:
    """``[pool_size]`` int64 counts of each entry over every element of ``assign`` ``[..., k]``."""
    idx = to_numpy(assign).astype(np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= pool_size):
        raise AnalysisArgumentError(f"assignment indices must lie in 0..{pool_size - 1}, got {idx.min()}..{idx.max()}")
    return np.bincount(idx, minlength=pool_size)


def usage_entropy(counts: np.ndarray, normalized: bool = True) -> float:
    """Shannon entropy (nats) of ``counts / counts.sum()``; divided by ``log(len(counts))`` if ``normalized``.

    Returns NaN for all-zero counts; a single-entry pool has normalised entropy 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts[counts > 0] / total
    h = float(-(p * np.log(p)).sum())
    if not normalized:
        return h
    return h / math.log(len(counts)) if len(counts) > 1 else 0.0


def _multi_hot(sets: torch.Tensor, pool_size: int) -> torch.Tensor:
    hot = torch.zeros(*sets.shape[:-1], pool_size, dtype=torch.float64)
    return hot.scatter_(-1, sets.long(), 1.0)


def mean_jaccard_distance(sets: torch.Tensor | np.ndarray, pool_size: int) -> float:
    """Mean Jaccard distance over all pairs ``i < j`` of the index sets ``[n, k]``; NaN when ``n < 2``."""
    s = to_tensor(sets)
    n = s.shape[0]
    if n < 2:
        return float("nan")
    hot = _multi_hot(s, pool_size)
    inter = hot @ hot.T
    size = hot.sum(dim=-1)
    union = size[:, None] + size[None, :] - inter
    sim = torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(inter))
    iu = torch.triu_indices(n, n, offset=1)
    return float((1.0 - sim[iu[0], iu[1]]).mean())


def distinct_sets(sets: torch.Tensor | np.ndarray) -> int:
    """Number of distinct index sets among the rows of ``[n, k]`` (order inside a row ignored)."""
    s = to_tensor(sets)
    if s.shape[0] == 0:
        return 0
    return int(torch.unique(s.sort(dim=-1).values, dim=0).shape[0])


def _ordered(assign: Mapping[Any, Any] | None) -> list[Any]:
    if not assign:
        return []
    return sorted(assign, key=lambda k: (0, k) if isinstance(k, (int, np.integer)) else (1, str(k)))


def selection_stats(
    cls_assign: Mapping[Any, torch.Tensor] | None,
    image_assign: Mapping[Any, torch.Tensor] | None,
    cls_pool_size: int,
    image_pool_size: int,
) -> list[dict[str, Any]]:
    """Per-layer usage, entropy and diversity (see the module docstring), JSON-ready dicts.

    Args:
        cls_assign: ``layer -> [batch, cls_topk]`` (``None`` to skip the CLS pool).
        image_assign: ``layer -> [batch, num_patches, image_topk]`` (``None`` to skip the image pool).
        cls_pool_size, image_pool_size: pool sizes (unused entries count towards the entropy).

    Returns:
        One dict per layer with ``layer`` and the ``cls_*``/``image_*`` numbers; usage as lists of ints,
        undefined values (e.g. Jaccard of a single image) as ``None``.
    """
    layers = list(dict.fromkeys(_ordered(cls_assign) + _ordered(image_assign)))
    out: list[dict[str, Any]] = []

    def num(v: float) -> float | None:
        return None if math.isnan(v) else v

    for layer in layers:
        row: dict[str, Any] = {"layer": layer}
        if cls_assign is not None and layer in cls_assign:
            a = to_tensor(cls_assign[layer])
            if a.ndim != 2:
                raise InputShapeError(f"cls_assign[{layer}] must be [batch, cls_topk], got {tuple(a.shape)}")
            usage = pool_usage(a, cls_pool_size)
            row.update({
                "cls_usage": usage.tolist(),
                "cls_entropy": num(usage_entropy(usage)),
                "cls_entropy_nats": num(usage_entropy(usage, normalized=False)),
                "cls_entries_used": int((usage > 0).sum()),
                "cls_jaccard": num(mean_jaccard_distance(a, cls_pool_size)),
                "cls_distinct_sets": distinct_sets(a),
            })
        if image_assign is not None and layer in image_assign:
            a = to_tensor(image_assign[layer])
            if a.ndim != 3:
                raise InputShapeError(
                    f"image_assign[{layer}] must be [batch, num_patches, image_topk], got {tuple(a.shape)}"
                )
            usage = pool_usage(a, image_pool_size)
            jac = [mean_jaccard_distance(a[b], image_pool_size) for b in range(a.shape[0])]
            row.update({
                "image_usage": usage.tolist(),
                "image_entropy": num(usage_entropy(usage)),
                "image_entropy_nats": num(usage_entropy(usage, normalized=False)),
                "image_entries_used": int((usage > 0).sum()),
                "image_jaccard": num(float(np.nanmean(jac)) if not all(map(math.isnan, jac)) else math.nan),
                "image_distinct_sets": float(np.mean([distinct_sets(a[b]) for b in range(a.shape[0])])),
                "image_distinct_sets_batch": distinct_sets(a.reshape(-1, a.shape[-1])),
            })
        out.append(row)
    return out


def selection_grid(
    image_assign: torch.Tensor | np.ndarray, layout: TokenLayout, mode: GridMode = "top1", rank: int = 0
) -> np.ndarray:
    """``[batch, h, w]`` int map of what each patch selected in one layer.

    ``mode="top1"``: pool entry at position ``rank`` of each patch's list (``rank=0``: the most similar
    entry, the core's lists being in ``torch.topk`` order). ``mode="set"``: an id per distinct selected
    set within each image, numbered by decreasing frequency (0 = the most common set; ties by first
    appearance), which shows which patches share exactly the same prompts.
    """
    a = to_numpy(image_assign).astype(np.int64)
    if a.ndim != 3 or a.shape[1] != layout.num_patches:
        raise InputShapeError(
            f"image_assign must be [batch, {layout.num_patches}, image_topk] for grid {layout.grid_size}, "
            f"got {a.shape}"
        )
    h, w = layout.grid_size
    if mode == "top1":
        if not -a.shape[-1] <= rank < a.shape[-1]:
            raise AnalysisIndexError(f"rank {rank} is outside the top-{a.shape[-1]} selection")
        return a[..., rank].reshape(a.shape[0], h, w)
    if mode == "set":
        out = np.empty(a.shape[:2], dtype=np.int64)
        for b in range(a.shape[0]):
            _, first, inverse, counts = np.unique(
                np.sort(a[b], axis=-1), axis=0, return_index=True, return_inverse=True, return_counts=True
            )
            order = np.lexsort((first, -counts))
            rank_of = np.empty_like(order)
            rank_of[order] = np.arange(order.size)
            out[b] = rank_of[inverse.reshape(-1)]
        return out.reshape(a.shape[0], h, w)
    raise AnalysisArgumentError(f"mode must be 'top1' or 'set', got {mode!r}")


def _discrete_cmap(n: int) -> tuple[ListedColormap, BoundaryNorm]:
    return ListedColormap(categorical_colors(max(n, 1))), BoundaryNorm(np.arange(-0.5, max(n, 1)), max(n, 1))


def plot_selection_grid_matplotlib(
    image_assign: torch.Tensor | np.ndarray,
    layout: TokenLayout,
    image: int = 0,
    mode: GridMode = "top1",
    rank: int = 0,
    pool_size: int | None = None,
    background: np.ndarray | torch.Tensor | None = None,
    alpha: float = 0.6,
    title: str | None = None,
    annotate: bool | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Patch grid coloured by the selected prompt (``top1``) or by selected-set id (``set``).

    ``pool_size`` fixes the colour scale for ``top1`` (defaults to the layout's image pool size);
    ``background`` (an image) is drawn under the grid with the grid at opacity ``alpha``; ``annotate``
    writes the id in each cell (default: when the grid has at most 16x16 cells).
    """
    grid = selection_grid(image_assign, layout, mode, rank)[image]
    n = (pool_size or pool_sizes(layout)[1] or int(grid.max()) + 1) if mode == "top1" else int(grid.max()) + 1
    cmap, norm = _discrete_cmap(n)
    if ax is None:
        fig = Figure(figsize=(5.6, 4.6), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[assignment]
    h, w = layout.grid_size
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    if background is not None:
        ax.imshow(as_rgb_uint8(background), extent=extent, interpolation="bilinear")
    im = ax.imshow(grid, cmap=cmap, norm=norm, extent=extent, interpolation="nearest",
                   alpha=alpha if background is not None else 1.0)
    if annotate if annotate is not None else (h <= 16 and w <= 16):
        for r in range(h):
            for c in range(w):
                ax.text(c, r, str(grid[r, c]), ha="center", va="center", fontsize="x-small", color="black")
    ticks = np.arange(n) if n <= 20 else np.linspace(0, n - 1, 11).round().astype(int)
    fig.colorbar(im, ax=ax, ticks=ticks, label="image-pool entry" if mode == "top1" else "selected-set id")
    ax.set_xticks(range(w))
    ax.set_yticks(range(h))
    ax.tick_params(labelsize="x-small")
    what = f"entry at rank {rank}" if mode == "top1" else "selected set"
    ax.set_title(title or f"image {image}: {what} per patch")
    return fig


def plot_selection_grid_plotly(
    image_assign: torch.Tensor | np.ndarray,
    layout: TokenLayout,
    image: int = 0,
    mode: GridMode = "top1",
    rank: int = 0,
    pool_size: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """Interactive selection grid; hovering a patch lists its full selection in rank order."""
    import plotly.graph_objects as go

    grid = selection_grid(image_assign, layout, mode, rank)[image]
    a = to_numpy(image_assign)[image]
    n = (pool_size or pool_sizes(layout)[1] or int(grid.max()) + 1) if mode == "top1" else int(grid.max()) + 1
    colours = categorical_colors(max(n, 1))
    scale: list[list[float | str]] = []
    for i, c in enumerate(colours):
        scale += [[i / len(colours), c], [(i + 1) / len(colours), c]]
    h, w = layout.grid_size
    sel = np.asarray([" ".join(map(str, row)) for row in a], dtype=object).reshape(h, w)
    fig = go.Figure(go.Heatmap(
        z=grid, zmin=-0.5, zmax=len(colours) - 0.5, colorscale=scale, customdata=sel,
        colorbar=dict(title=dict(text="entry" if mode == "top1" else "set id")),
        hovertemplate="patch (%{y}, %{x})<br>id %{z}<br>selected %{customdata}<extra></extra>",
    ))
    fig.update_xaxes(constrain="domain", title_text="column")
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain", title_text="row")
    what = f"entry at rank {rank}" if mode == "top1" else "selected set"
    fig.update_layout(title=dict(text=title or f"image {image}: {what} per patch"), width=560, height=520)
    return fig


def _usage_matrix(stats: Sequence[Mapping[str, Any]], pool: PoolName) -> tuple[list[Any], np.ndarray]:
    key = f"{pool}_usage"
    rows = [r for r in stats if key in r]
    if not rows:
        raise AnalysisArgumentError(f"the stats hold no {key}; pass the {pool} assignments to selection_stats")
    return [r["layer"] for r in rows], np.asarray([r[key] for r in rows], dtype=np.float64)


def plot_pool_usage_matplotlib(
    stats: Sequence[Mapping[str, Any]],
    pool: PoolName = "image",
    style: Literal["bars", "heatmap"] = "bars",
    title: str | None = None,
) -> Figure:
    """Usage counts of each pool entry per layer: small-multiple bar charts or one layers x entries heatmap."""
    layers, usage = _usage_matrix(stats, pool)
    name = "CLS pool" if pool == "cls" else "image pool"
    if style == "heatmap":
        fig = Figure(figsize=(max(5.0, 0.3 * usage.shape[1] + 2.5), max(3.0, 0.35 * len(layers) + 1.5)),
                     layout="constrained")
        ax = fig.add_subplot()
        im = ax.imshow(usage, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="times selected")
        ax.set_yticks(range(len(layers)), [str(v) for v in layers])
        ax.set_xlabel(f"{name} entry")
        ax.set_ylabel("layer")
        ax.set_title(title or f"{name} usage per layer")
        return fig
    if style != "bars":
        raise AnalysisArgumentError(f"style must be 'bars' or 'heatmap', got {style!r}")
    ncols = min(4, len(layers))
    nrows = int(math.ceil(len(layers) / ncols))
    fig = Figure(figsize=(3.0 * ncols, 2.2 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    x = np.arange(usage.shape[1])
    for ax, layer, counts in zip(axes, layers, usage, strict=False):
        ax.bar(x, counts, color="#1f77b4" if pool == "image" else "#d62728", width=0.85)
        ax.set_title(f"layer {layer}", fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    fig.supxlabel(f"{name} entry")
    fig.supylabel("times selected")
    fig.suptitle(title or f"{name} usage per layer")
    return fig


def plot_pool_usage_plotly(
    stats: Sequence[Mapping[str, Any]], pool: PoolName = "image", title: str | None = None
) -> go.Figure:
    """Interactive layers x entries usage heatmap (hover: layer, entry, count)."""
    import plotly.graph_objects as go

    layers, usage = _usage_matrix(stats, pool)
    name = "CLS pool" if pool == "cls" else "image pool"
    fig = go.Figure(go.Heatmap(
        z=usage, y=[str(v) for v in layers], colorscale="Viridis",
        colorbar=dict(title=dict(text="times selected")),
        hovertemplate="layer %{y}<br>entry %{x}<br>selected %{z:.0f} times<extra></extra>",
    ))
    fig.update_layout(
        title=dict(text=title or f"{name} usage per layer"), xaxis=dict(title=dict(text=f"{name} entry")),
        yaxis=dict(title=dict(text="layer"), type="category"), width=750, height=450,
    )
    return fig


_STAT_PANELS: tuple[tuple[str, str], ...] = (
    ("entropy", "usage entropy (normalised)"),
    ("jaccard", "mean pairwise Jaccard distance"),
    ("distinct_sets", "distinct selected sets"),
)


def _stat_series(stats: Sequence[Mapping[str, Any]], key: str) -> tuple[list[Any], list[float]]:
    pts = [(r["layer"], r[key]) for r in stats if r.get(key) is not None]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def plot_selection_stats_matplotlib(stats: Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Entropy, Jaccard diversity and distinct-set counts per layer for the CLS and image pools."""
    fig = Figure(figsize=(12.0, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (suffix, label) in zip(axes, _STAT_PANELS, strict=True):
        for pool, colour in (("cls", "#d62728"), ("image", "#1f77b4")):
            layers, values = _stat_series(stats, f"{pool}_{suffix}")
            if layers:
                x = layers if all(isinstance(v, (int, np.integer)) for v in layers) else [str(v) for v in layers]
                ax.plot(x, values, marker="o", color=colour, label=f"{pool} pool")
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel("layer")
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
    fig.suptitle(title or "prompt selection per layer")
    return fig


def plot_selection_stats_plotly(stats: Sequence[Mapping[str, Any]], title: str | None = None) -> go.Figure:
    """Interactive version of :func:`plot_selection_stats_matplotlib`."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=[label for _, label in _STAT_PANELS])
    for col, (suffix, _) in enumerate(_STAT_PANELS, start=1):
        for pool, colour in (("cls", "#d62728"), ("image", "#1f77b4")):
            layers, values = _stat_series(stats, f"{pool}_{suffix}")
            if layers:
                fig.add_trace(go.Scatter(
                    x=[str(v) for v in layers], y=values, mode="lines+markers", name=f"{pool} pool",
                    line=dict(color=colour), legendgroup=pool, showlegend=col == 1,
                ), row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_layout(title=dict(text=title or "prompt selection per layer"), width=1100, height=420)
    return fig


def write_assignments_csv(
    path: str | Path,
    cls_assign: Mapping[Any, torch.Tensor] | None,
    image_assign: Mapping[Any, torch.Tensor] | None,
    layout: TokenLayout,
    image_ids: Sequence[Any] | None = None,
) -> Path:
    """Write one CSV row per (layer, image, token) with the selected pool entries in rank order.

    Columns: ``layer, image, token, query_index, pool, selected`` where ``token`` is ``CLS`` or
    ``patch(r,c)``, ``query_index`` its row in the captured attention, ``pool`` ``cls``/``image`` and
    ``selected`` the space-separated entry indices (most similar first). ``image_ids`` replaces the batch
    position in the ``image`` column (e.g. dataset indices or file names).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = query_labels(layout)
    layers = list(dict.fromkeys(_ordered(cls_assign) + _ordered(image_assign)))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["layer", "image", "token", "query_index", "pool", "selected"])
        for layer in layers:
            if cls_assign is not None and layer in cls_assign:
                a = to_numpy(cls_assign[layer]).astype(np.int64)
                for b in range(a.shape[0]):
                    img = image_ids[b] if image_ids is not None else b
                    writer.writerow([layer, img, labels[0], 0, "cls", " ".join(map(str, a[b]))])
            if image_assign is not None and layer in image_assign:
                a = to_numpy(image_assign[layer]).astype(np.int64)
                if a.ndim != 3 or a.shape[1] != layout.num_patches:
                    raise InputShapeError(
                        f"image_assign[{layer}] must be [batch, {layout.num_patches}, image_topk], got {a.shape}"
                    )
                for b in range(a.shape[0]):
                    img = image_ids[b] if image_ids is not None else b
                    for p in range(a.shape[1]):
                        q = layout.num_prefix + p
                        writer.writerow([layer, img, labels[q], q, "image", " ".join(map(str, a[b, p]))])
    return path
