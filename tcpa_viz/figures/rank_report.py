"""Attention-rank report (paper section 4): rank per layer of the baseline and of TCPA, after and before the mask.

For a batch of test images, every layer's attention ``[B, H, Q, K]`` is captured and each ``[Q, K]``
matrix (per head, and head-averaged) is measured with :func:`tcpa_viz.rank.rank_measures`: energy ranks at
tau 0.9/0.95/0.99 (nuclear and squared), numerical rank, effective rank and stable rank. Two
submatrices are measured: ``full`` (all keys, prompts included) and ``tokens`` (only the CLS and patch
key columns, which both models have, so the numbers compare without counting prompt columns).
"TCPA before the mask" is ``softmax(q k^T)`` over all prompts, i.e. what every token would see without the
token-coordinated selection; for the baseline both are the same matrix.

Outputs: ``rank.csv`` (one row per model, attention, submatrix, layer, head reduction and measure: mean,
std, min, max over images (and heads), count), ``rank.json`` (the same rows plus the settings) and
``rank.png``/``rank.html`` (rank vs layer for four measures, full matrices, per head).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch.utils.data import Dataset

from tcpa_core.data import dataset_size

from ..rank import Block, aggregate_ranks, plot_rank_vs_layer_matplotlib, plot_rank_vs_layer_plotly, rank_table
from ..tables import write_rows_csv, write_rows_json
from .common import (
    DEFAULT_DEMO_DIR,
    FIGURES_SUBDIR,
    DataSpec,
    LoadedModel,
    ModelInputs,
    ModelRef,
    capture_attention,
    load_pair,
    resolve_data,
    sample_indices,
    write_figures,
)

SUBMATRICES: tuple[Block, ...] = ("full", "tokens")
PLOTTED_MEASURES: tuple[str, ...] = ("effective_rank", "energy_rank_0.9", "stable_rank", "numerical_rank")
RANK_COLUMNS: tuple[str, ...] = ("model", "method", "attention", "submatrix", "layer", "heads", "measure", "mean",
                                 "std", "min", "max", "n")
"""Columns of ``rank.csv``; ``layer`` is the 0-based block index, ``attention`` is ``masked`` or ``raw``."""
DEFAULT_NUM_IMAGES = 16


def model_rank_rows(loaded: LoadedModel, images: Any, submatrices: Sequence[Block] = SUBMATRICES
                    ) -> list[dict[str, Any]]:
    """Aggregated rank rows (see :data:`RANK_COLUMNS`) of one model on images ``[B, C, H, W]``.

    Models without a mask (no TCPA pools) get only ``attention = "masked"`` rows, which are their attention.
    """
    masked, raw, layout = capture_attention(loaded.model, images, raw=True)
    variants = [("masked", masked)]
    if loaded.model.config.uses_pools:
        variants.append(("raw", raw))
    rows: list[dict[str, Any]] = []
    for attention, by_layer in variants:
        for submatrix in submatrices:
            table = rank_table(by_layer, layout, block=submatrix, include_head_mean=True)
            for r in aggregate_ranks(table):
                rows.append({"model": loaded.label, "method": loaded.method, "attention": attention,
                             "submatrix": submatrix, **r})
    return rows


def _series_label(row: dict[str, Any], tcpa_like: set[str]) -> str:
    if row["model"] not in tcpa_like:
        return row["model"]
    return f"{row['model']} ({'after' if row['attention'] == 'masked' else 'before'} the mask)"


def rank_series(rows: Sequence[dict[str, Any]], submatrix: str = "full") -> dict[str, list[dict[str, Any]]]:
    """``{line label: aggregate rows}`` for :func:`tcpa_viz.rank.plot_rank_vs_layer_matplotlib`."""
    tcpa_like = {r["model"] for r in rows if r["attention"] == "raw"}
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["submatrix"] == submatrix:
            series.setdefault(_series_label(r, tcpa_like), []).append(r)
    return series


def rank_matplotlib(rows: Sequence[dict[str, Any]], title: str, submatrix: str = "full") -> Figure:
    """2 x 2 panels: the :data:`PLOTTED_MEASURES` per layer (mean ± std over images and heads)."""
    series = rank_series(rows, submatrix)
    fig = Figure(figsize=(11.0, 7.8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, measure in zip(axes, PLOTTED_MEASURES, strict=True):
        plot_rank_vs_layer_matplotlib(series, measure=measure, heads="per-head", ax=ax,
                                      title=measure.replace("_", " "))
        ax.set_xlabel("layer (0 = first block)")
        ax.get_legend().remove()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    fig.suptitle(title, fontsize="medium")
    return fig


def rank_plotly(rows: Sequence[dict[str, Any]], title: str, submatrix: str = "full") -> Any:
    """Interactive version of :func:`rank_matplotlib`."""
    from plotly.subplots import make_subplots

    series = rank_series(rows, submatrix)
    fig = make_subplots(rows=2, cols=2, subplot_titles=[m.replace("_", " ") for m in PLOTTED_MEASURES])
    for i, measure in enumerate(PLOTTED_MEASURES):
        panel = plot_rank_vs_layer_plotly(series, measure=measure, heads="per-head")
        for trace in panel.data:
            trace.update(legendgroup=trace.name, showlegend=i == 0)
            fig.add_trace(trace, row=i // 2 + 1, col=i % 2 + 1)
        fig.update_xaxes(title_text="layer (0 = first block)", row=i // 2 + 1, col=i % 2 + 1)
    fig.update_layout(title=dict(text=title.replace("\n", "<br>")), width=1100, height=780)
    return fig


def rank_report(
    baseline: ModelRef | None = None,
    tcpa: ModelRef | None = None,
    out_dir: str | Path | None = None,
    data: DataSpec | Dataset | None = None,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
    demo_dir: str | Path = DEFAULT_DEMO_DIR,
    stem: str = "rank",
) -> list[Path]:
    """Measure the attention rank per layer and write ``<stem>.csv``, ``<stem>.json``, ``<stem>.png`` and
    ``<stem>.html``; returns the four paths.

    Args:
        baseline, tcpa: checkpoints (paths or loaded); default: those of ``demo_dir``.
        out_dir: output folder (default ``<demo_dir>/figures``).
        data: a :class:`DataSpec` or dataset (default: the test split of the baseline's training dataset).
        num_images: images measured (a seeded random subset of the split).
        seed: seed of that subset.
        demo_dir: the demo folder for the defaults.
        stem: file name without extension.
    """
    base, tc = load_pair(baseline, tcpa, demo_dir)
    dataset = resolve_data(data, base)
    indices = sample_indices(dataset_size(dataset), num_images, seed)
    rows: list[dict[str, Any]] = []
    for loaded in (base, tc):
        rows += model_rank_rows(loaded, ModelInputs(dataset, loaded.model, indices).batch())
    out = Path(out_dir) if out_dir is not None else Path(demo_dir) / FIGURES_SUBDIR
    meta = {
        "num_images": len(indices), "sample_indices": list(indices), "submatrices": list(SUBMATRICES),
        "models": {key: {"label": m.label, "method": m.method, "checkpoint": str(m.path)}
                   for key, m in (("baseline", base), ("tcpa", tc))},
        "layers": "0-based block index", "heads": "per-head: over images and heads; head-mean: over images of the "
                                                  "head-averaged matrix",
    }
    title = (f"Attention rank per layer, {len(indices)} test images, full attention matrices [queries x all keys], "
             "per head (mean ± std)")
    csv_path = write_rows_csv(rows, out / f"{stem}.csv", fieldnames=RANK_COLUMNS)
    json_path = write_rows_json(rows, out / f"{stem}.json", meta=meta)
    return [csv_path, json_path, *write_figures(out, stem, rank_matplotlib(rows, title), rank_plotly(rows, title))]
