"""Rank of attention matrices: energy rank, numerical rank, effective rank, stable rank.

Section 4 of the paper argues that prompted self-attention is low-rank and that TCPA makes it more
diverse. These functions measure it on captured attention ``[batch, head, query, key]``.

Measures, all computed from the singular values ``s_1 >= s_2 >= ... >= s_n`` (``n = min(Q, K)``):

``energy_rank_<tau>``
    smallest ``r`` with ``sum_{i<=r} s_i >= tau * sum_i s_i`` (share of the nuclear norm).
``energy2_rank_<tau>``
    the same with ``s_i^2`` (share of the squared Frobenius norm, "variance explained").
``numerical_rank``
    number of ``s_i > max(atol, rtol * s_1)``, the rule of ``torch.linalg.matrix_rank``; by default
    ``atol = 0`` and ``rtol = max(Q, K) * eps`` where ``eps`` is the machine epsilon of the input's dtype
    (not of the float64 used for the SVD: float32 attention carries float32 rounding noise).
``effective_rank``
    Roy & Vetterli (2007): ``exp(H(p))`` with ``p_i = s_i / sum_j s_j`` (natural log); 0 for a zero matrix.
``stable_rank``
    ``||A||_F^2 / ||A||_2^2 = sum s_i^2 / s_1^2``; 0 for a zero matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from matplotlib.figure import Figure

from .colors import categorical_colors
from .errors import AnalysisArgumentError
from .tables import write_rows_csv, write_rows_json
from .tokens import to_tensor

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.axes import Axes

    from tcpa_core.layout import TokenLayout

Block = Literal["full", "tokens", "patches", "prompts"] | tuple[slice, slice]
"""Submatrix to measure: ``full``; ``tokens`` = [prefix|patches] rows x [prefix|patches] columns;
``patches`` = patch rows x patch columns; ``prompts`` = all rows x prompt columns; or (row slice, column slice)."""

DEFAULT_TAUS: tuple[float, ...] = (0.9, 0.95, 0.99)
_ENERGY_RTOL = 1e-10


def singular_values(matrices: torch.Tensor | np.ndarray, float64: bool = True) -> torch.Tensor:
    """Singular values ``[..., min(Q, K)]`` (descending) of ``[..., Q, K]`` via ``torch.linalg.svdvals``."""
    a = to_tensor(matrices)
    if a.ndim < 2:
        raise AnalysisArgumentError(f"expected matrices [..., Q, K], got shape {tuple(a.shape)}")
    a = a.double() if float64 else (a if a.is_floating_point() else a.float())
    return torch.linalg.svdvals(a)


def energy_rank(s: torch.Tensor, tau: float = 0.9, squared: bool = False) -> torch.Tensor:
    """Smallest ``r`` whose top-``r`` singular values hold ``tau`` of the total (``[...]`` int64).

    ``s``: ``[..., n]`` singular values in descending order. ``squared`` uses ``s^2`` energies. A relative
    slack of 1e-10 keeps exact spectra (e.g. ``tau`` hit exactly) from rounding up. Zero matrices give 0.
    """
    if not 0.0 < tau <= 1.0:
        raise AnalysisArgumentError(f"tau must be in (0, 1], got {tau}")
    e = s.double() ** 2 if squared else s.double()
    cum = e.cumsum(dim=-1)
    total = cum[..., -1:]
    reached = cum >= total * (tau - _ENERGY_RTOL)
    r = (~reached).sum(dim=-1) + 1
    return torch.where(total[..., 0] > 0, r, torch.zeros_like(r))


def numerical_rank(
    s: torch.Tensor,
    shape: tuple[int, int],
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """Count of singular values above ``max(atol, rtol * s_max)`` (``torch.linalg.matrix_rank`` rule).

    Args:
        s: ``[..., n]`` singular values, descending.
        shape: ``(Q, K)`` of the matrices (for the default ``rtol``).
        atol: absolute tolerance (``None`` = 0).
        rtol: relative tolerance; ``None`` means ``max(Q, K) * eps`` when ``atol`` is ``None`` or 0,
            else 0 (as in torch).
        eps: machine epsilon for the default ``rtol``; ``None`` = that of ``s``'s dtype.
    """
    if eps is None:
        eps = torch.finfo(s.dtype).eps
    a = 0.0 if atol is None else float(atol)
    if rtol is None:
        rtol = max(shape) * eps if a <= 0.0 else 0.0
    tol = torch.clamp(s[..., :1] * float(rtol), min=a)
    return (s > tol).sum(dim=-1)


def effective_rank(s: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli effective rank ``exp(-sum p log p)``, ``p = s / sum s``; ``[...]`` float64."""
    s = s.double().clamp_min(0.0)
    total = s.sum(dim=-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(torch.float64).tiny)
    h = -(torch.where(p > 0, p * p.clamp_min(torch.finfo(torch.float64).tiny).log(), torch.zeros_like(p))).sum(-1)
    return torch.where(total[..., 0] > 0, h.exp(), torch.zeros_like(h))


def stable_rank(s: torch.Tensor) -> torch.Tensor:
    """Stable rank ``sum s^2 / s_max^2``; ``[...]`` float64 (0 for a zero matrix)."""
    s = s.double()
    top = s[..., 0] ** 2
    return torch.where(top > 0, (s**2).sum(-1) / top.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(top))


def energy_measure_name(tau: float, squared: bool) -> str:
    """Column name of an energy rank, e.g. ``energy_rank_0.9`` or ``energy2_rank_0.95``."""
    return f"energy{'2' if squared else ''}_rank_{tau:g}"


def rank_measures(
    matrices: torch.Tensor | np.ndarray,
    taus: Sequence[float] = DEFAULT_TAUS,
    float64: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> dict[str, torch.Tensor]:
    """All measures of ``[..., Q, K]`` matrices, each ``[...]`` (see the module docstring for names).

    The numerical rank's default epsilon is the one of the input dtype (float32 for float32 attention)
    even though the SVD runs in float64 when ``float64`` is set.
    """
    a = to_tensor(matrices)
    in_dtype = a.dtype if a.is_floating_point() else torch.float32
    s = singular_values(a, float64=float64)
    out: dict[str, torch.Tensor] = {}
    for tau in taus:
        out[energy_measure_name(tau, False)] = energy_rank(s, tau, squared=False)
        out[energy_measure_name(tau, True)] = energy_rank(s, tau, squared=True)
    out["numerical_rank"] = numerical_rank(
        s, (a.shape[-2], a.shape[-1]), atol=atol, rtol=rtol, eps=torch.finfo(in_dtype).eps
    )
    out["effective_rank"] = effective_rank(s)
    out["stable_rank"] = stable_rank(s)
    return out


def attention_block(attn: torch.Tensor, layout: TokenLayout | None, block: Block = "full") -> torch.Tensor:
    """Submatrix ``[..., q, k]`` of ``[..., Q, K]`` attention (see :data:`Block`; named blocks need ``layout``)."""
    attn = to_tensor(attn)
    if isinstance(block, tuple):
        rows, cols = block
        return attn[..., rows, cols]
    if block == "full":
        return attn
    if layout is None:
        raise AnalysisArgumentError(f"block {block!r} needs the token layout")
    ks, qs = layout.key_slices(), layout.query_slices()
    if block == "tokens":
        return torch.cat([attn[..., ks["prefix"]], attn[..., ks["patches"]]], dim=-1)
    if block == "patches":
        return attn[..., qs["patches"], ks["patches"]]
    if block == "prompts":
        start, stop = ks["cls_prompts"].start, ks["prompts"].stop
        return attn[..., start:stop]
    raise AnalysisArgumentError(f"block must be 'full', 'tokens', 'patches', 'prompts' or (rows, cols), got {block!r}")


def _layer_order(key: Any) -> tuple[int, Any]:
    return (0, key) if isinstance(key, (int, np.integer)) else (1, str(key))


def rank_table(
    attn_by_layer: Mapping[Any, torch.Tensor],
    layout: TokenLayout | None = None,
    block: Block = "full",
    taus: Sequence[float] = DEFAULT_TAUS,
    float64: bool = True,
    include_head_mean: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
) -> list[dict[str, Any]]:
    """Long table of rank measures for every layer, head and image.

    Args:
        attn_by_layer: ``layer -> [batch, head, query, key]`` attention (layers sorted by key).
        layout: token layout, needed for named blocks other than ``"full"``.
        block: submatrix to measure (see :data:`Block`).
        taus: energy thresholds.
        float64: run the SVD in float64.
        include_head_mean: also measure the head-averaged matrix, reported with ``head = "mean"``.
        atol, rtol: numerical-rank tolerances (see :func:`numerical_rank`).

    Returns:
        Rows ``{"layer", "head", "image", "measure", "value"}``; integer measures are ints.
    """
    rows: list[dict[str, Any]] = []
    for layer in sorted(attn_by_layer, key=_layer_order):
        attn = to_tensor(attn_by_layer[layer])
        if attn.ndim != 4:
            raise AnalysisArgumentError(f"layer {layer}: expected [batch, head, query, key], got {tuple(attn.shape)}")
        sub = attention_block(attn, layout, block)
        groups: list[tuple[Any, torch.Tensor]] = [("per-head", sub)]
        if include_head_mean:
            groups.append(("mean", sub.mean(dim=1, keepdim=True)))
        for kind, mats in groups:
            measures = rank_measures(mats, taus=taus, float64=float64, atol=atol, rtol=rtol)
            for name, values in measures.items():
                v = values.tolist()
                for b, per_image in enumerate(v):
                    for h, value in enumerate(per_image):
                        rows.append({
                            "layer": layer, "head": "mean" if kind == "mean" else h, "image": b,
                            "measure": name, "value": value,
                        })
    return rows


def aggregate_ranks(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean, std (population, ddof=0), min, max and count per ``(layer, heads, measure)``.

    ``heads`` is ``"per-head"`` (over images and individual heads) or ``"head-mean"`` (over images, for
    the head-averaged matrices of ``include_head_mean``). Order: layers, then measures, as first seen.
    """
    groups: dict[tuple[Any, str, str], list[float]] = {}
    for r in rows:
        kind = "head-mean" if r["head"] == "mean" else "per-head"
        groups.setdefault((r["layer"], kind, r["measure"]), []).append(float(r["value"]))
    out = []
    for (layer, kind, measure), values in groups.items():
        arr = np.asarray(values, dtype=np.float64)
        out.append({
            "layer": layer, "heads": kind, "measure": measure, "mean": float(arr.mean()),
            "std": float(arr.std()), "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size),
        })
    return out


def write_rank_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rank rows (from :func:`rank_table` or :func:`aggregate_ranks`) to CSV."""
    return write_rows_csv(rows, path)


def write_rank_json(rows: Any, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write rank rows, or a dict such as ``{"rows": ..., "aggregate": ...}``, to JSON with optional ``meta``."""
    return write_rows_json(rows, path, meta=meta)


def _series(
    aggregate: Iterable[Mapping[str, Any]], measure: str, heads: str
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    picked = [r for r in aggregate if r["measure"] == measure and r["heads"] == heads]
    picked.sort(key=lambda r: _layer_order(r["layer"]))
    return (
        [r["layer"] for r in picked],
        np.asarray([r["mean"] for r in picked], dtype=np.float64),
        np.asarray([r["std"] for r in picked], dtype=np.float64),
    )


def _by_model(aggregates: Mapping[str, Sequence[Mapping[str, Any]]] | Sequence[Mapping[str, Any]]):
    return aggregates if isinstance(aggregates, Mapping) else {"": aggregates}


def plot_rank_vs_layer_matplotlib(
    aggregates: Mapping[str, Sequence[Mapping[str, Any]]] | Sequence[Mapping[str, Any]],
    measure: str = "effective_rank",
    heads: Literal["per-head", "head-mean"] = "per-head",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Mean ``measure`` per layer (band = ±1 std) for one or several models.

    ``aggregates``: ``label -> rows of aggregate_ranks`` (one line per model), or one list of rows.
    """
    if ax is None:
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[assignment]
    models = _by_model(aggregates)
    colours = categorical_colors(max(len(models), 1))
    plotted = 0
    for colour, (label, agg) in zip(colours, models.items(), strict=True):
        layers, mean, std = _series(agg, measure, heads)
        if not layers:
            continue
        x = np.asarray(layers) if all(isinstance(v, (int, np.integer)) for v in layers) else np.arange(len(layers))
        ax.plot(x, mean, marker="o", color=colour, label=label or None)
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        plotted += 1
    if plotted == 0:
        raise AnalysisArgumentError(f"no aggregate rows for measure {measure!r} with heads {heads!r}")
    ax.set_xlabel("layer")
    ax.set_ylabel(measure.replace("_", " "))
    ax.set_title(title or f"{measure.replace('_', ' ')} per layer ({heads}, mean ± std)")
    ax.grid(True, alpha=0.3)
    if any(models):
        ax.legend()
    return fig


def plot_rank_vs_layer_plotly(
    aggregates: Mapping[str, Sequence[Mapping[str, Any]]] | Sequence[Mapping[str, Any]],
    measure: str = "effective_rank",
    heads: Literal["per-head", "head-mean"] = "per-head",
    title: str | None = None,
) -> go.Figure:
    """Interactive version of :func:`plot_rank_vs_layer_matplotlib` (error bars = ±1 std)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    models = _by_model(aggregates)
    for colour, (label, agg) in zip(categorical_colors(max(len(models), 1)), models.items(), strict=False):
        layers, mean, std = _series(agg, measure, heads)
        if layers:
            fig.add_trace(go.Scatter(
                x=[str(v) for v in layers] if not all(isinstance(v, (int, np.integer)) for v in layers) else layers,
                y=mean, error_y=dict(type="data", array=std, visible=True), mode="lines+markers",
                name=label or measure, line=dict(color=colour),
            ))
    if not fig.data:
        raise AnalysisArgumentError(f"no aggregate rows for measure {measure!r} with heads {heads!r}")
    fig.update_layout(
        title=dict(text=title or f"{measure} per layer ({heads})"),
        xaxis=dict(title=dict(text="layer")), yaxis=dict(title=dict(text=measure)), width=700, height=450,
    )
    return fig

