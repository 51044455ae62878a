"""Paper Fig. 1: where single tokens look, baseline vs TCPA, and training time per epoch vs accuracy.

Top: for the CLS token, the patch at the centre of the object's ground-truth box and a background patch,
one row of the last layer's attention (mean over heads) of each model. The patch-key weights are put on
the patch grid, upsampled bilinearly and overlaid on the image (jet colours, min-max scaled per map);
the query patch is boxed in red and the ground-truth box is dashed white. The weights on the prefix
(CLS) and prompt key columns are shown separately as bars under each map (TCPA: CLS-pool and
image-pool columns; a query's unselected prompts show 0 because the mask removes them; rows of TCPA
sum to less than one). Bottom: seconds per training epoch vs accuracy of the methods, read from the
demo's ``summary.json`` (test accuracy) or each run's own ``summary.json`` (validation accuracy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch.utils.data import Dataset

from ..attention_maps import TokenAttention, token_attention
from ..colors import GROUP_COLORS
from ..errors import FigureArgumentError
from ..models import LoadedModel, display_image, method_title, read_demo_summary
from ..overlay import plot_overlay_matplotlib, plot_overlay_plotly
from ..tokens import GROUP_TITLES, PROMPT_GROUPS, QuerySpec, to_numpy
from .common import (
    DEFAULT_DEMO_DIR,
    FIGURES_SUBDIR,
    DataSpec,
    ModelInputs,
    ModelRef,
    QueryPatches,
    capture_attention,
    class_names,
    figure_context,
    is_tcpa_family,
    labels_of,
    predict,
    query_patches,
    summary_config,
    write_figures,
)
from .compare_panel import (
    ComparePoint,
    compare_points,
    decorate_compare_plotly,
    draw_compare_matplotlib,
    find_compare_csv,
)


def _read_summary(summary: str | Path | Mapping[str, Any] | None, demo_dir: str | Path) -> Mapping[str, Any] | None:
    """The demo summary for the time/accuracy chart: given as a dict or a path, else the one in ``demo_dir``."""
    if isinstance(summary, (str, Path)):
        path = Path(summary)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise FigureArgumentError(f"cannot read the summary {path} ({exc}); pass the summary.json that "
                                      "`tcpa-viz demo` wrote, or leave --summary out.") from exc
    return summary if summary is not None else read_demo_summary(demo_dir)


@dataclass(frozen=True)
class QueryView:
    """One column of Fig. 1: a query token, its title and the patch to box (``None`` for CLS)."""

    title: str
    query: QuerySpec
    box: tuple[int, int] | None


@dataclass(frozen=True)
class TimingPoint:
    """One method on the time-vs-accuracy chart (``accuracy`` in [0, 1]; ``tcpa_family``: a method with prompt
    pools, drawn as a star)."""

    label: str
    seconds_per_epoch: float
    accuracy: float
    metric: str
    tcpa_family: bool = False


ChartPoint = TimingPoint | ComparePoint
"""A method on the time-vs-accuracy chart: from a demo/run summary, or from ``compare.csv`` (with error bars)."""


def _compare_only(points: Sequence[ChartPoint]) -> list[ComparePoint] | None:
    """``points`` when every one comes from ``compare.csv`` (then the chart gets error bars), else None."""
    compared = [p for p in points if isinstance(p, ComparePoint)]
    return compared if compared and len(compared) == len(points) else None


def query_views(patches: QueryPatches) -> list[QueryView]:
    """CLS, the object patch and the background patch."""
    obj, bg = patches.object_patch, patches.background_patch
    return [
        QueryView("CLS token", "cls", None),
        QueryView(f"object patch {obj}", obj, obj),
        QueryView(f"background patch {bg}", bg, bg),
    ]


def timing_points(baseline: LoadedModel, tcpa: LoadedModel,
                  summary: Mapping[str, Any] | None = None) -> list[TimingPoint]:
    """Seconds per epoch and accuracy of the methods.

    From ``summary`` (the demo's ``summary.json``: every method it lists, test accuracy) when it has
    methods, else from the run folder of each checkpoint (``<run>/summary.json``: validation accuracy), else
    from the checkpoint's recorded metrics. Methods without timing are left out.
    """
    points: list[TimingPoint] = []
    for method, info in ((summary or {}).get("methods") or {}).items():
        seconds, acc = info.get("seconds_per_epoch"), info.get("test_acc")
        if seconds is not None and acc is not None:
            config = summary_config(method, info)
            label = config.display_name if config is not None else method_title(method)
            points.append(TimingPoint(label, float(seconds), float(acc), "test", is_tcpa_family(method, info)))
    if points:
        return points
    for loaded in (baseline, tcpa):
        run_summary = loaded.path.parent / "summary.json"
        info = json.loads(run_summary.read_text()) if run_summary.is_file() else {}
        seconds, acc = info.get("seconds_per_epoch"), info.get("best_val_acc")
        if seconds is None or acc is None:
            metrics = loaded.meta.get("metrics") or {}
            seconds, acc = metrics.get("train_seconds"), metrics.get("val_acc")
        if seconds is not None and acc is not None:
            points.append(TimingPoint(loaded.label, float(seconds), float(acc), "validation", loaded.is_tcpa_family))
    return points


def _bar_groups(ta: TokenAttention) -> list[tuple[str, np.ndarray]]:
    parts = [("prefix", to_numpy(ta.prefix_weights[0]))]
    parts += [(g, to_numpy(ta.prompt_weights[g][0])) for g in PROMPT_GROUPS]
    return [(g, v.astype(np.float64)) for g, v in parts if v.size]


def _row_title(loaded: LoadedModel, predicted: int, names: Sequence[str] | None) -> str:
    name = names[predicted] if names and 0 <= predicted < len(names) else str(predicted)
    return f"{loaded.label}\n(predicts {name})"


def _draw_bars(ax: Any, ta: TokenAttention, ymax: float) -> None:
    x = 0
    ticks, labels = [], []
    for group, weights in _bar_groups(ta):
        xs = np.arange(x, x + weights.size)
        ax.bar(xs, weights, color=GROUP_COLORS[group], width=0.8)
        ticks.append(x + (weights.size - 1) / 2)
        labels.append(GROUP_TITLES[group] if group != "prefix" else "CLS")
        x += weights.size + 1
    ax.set_xticks(ticks, labels, fontsize="x-small")
    ax.set_xlim(-1, x - 0.5)
    ax.set_ylim(0, ymax)
    ax.tick_params(axis="y", labelsize="x-small")
    ax.text(0.99, 0.95, f"prompts {float(ta.prompt_total()[0]):.3f} | row {float(ta.row_sum[0]):.3f}",
            transform=ax.transAxes, ha="right", va="top", fontsize="x-small")


def _chart_ranges(points: Sequence[ChartPoint]) -> tuple[list[float], list[float]]:
    """Axis ranges of the time/accuracy chart with room for the labels right of the markers."""
    if not points:
        return [0.0, 1.0], [0.0, 100.0]
    xs = [p.seconds_per_epoch for p in points]
    ys = [100 * p.accuracy for p in points]
    xpad, ypad = max(0.5, 0.25 * (max(xs) - min(xs))), max(2.0, 0.3 * (max(ys) - min(ys)))
    return [max(0.0, min(xs) - xpad), max(xs) + 2.5 * xpad], [min(ys) - ypad, min(100.0, max(ys) + ypad) + 0.5]


def _time_accuracy_matplotlib(ax: Any, points: Sequence[ChartPoint]) -> None:
    if not points:
        ax.text(0.5, 0.5, "no training time / accuracy recorded for these checkpoints", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    for i, p in enumerate(points):
        tcpa = p.tcpa_family
        ax.scatter(p.seconds_per_epoch, 100 * p.accuracy, s=140 if tcpa else 90, marker="*" if tcpa else "o",
                   color="#d62728" if tcpa else f"C{i}", zorder=3)
        ax.annotate(f"{p.label} ({100 * p.accuracy:.1f}%, {p.seconds_per_epoch:.1f} s)",
                    (p.seconds_per_epoch, 100 * p.accuracy), textcoords="offset points", xytext=(8, 4),
                    fontsize="small")
    xrange, yrange = _chart_ranges(points)
    ax.set_xlim(*xrange)
    ax.set_ylim(*yrange)
    ax.set_xlabel("training time per epoch (s)")
    ax.set_ylabel(f"{points[0].metric} accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title("time per epoch vs accuracy", fontsize="medium")


def figure1_matplotlib(image: np.ndarray, views: Sequence[QueryView], rows: Sequence[tuple[str, list[TokenAttention]]],
                       object_box: tuple[float, float, float, float] | None, points: Sequence[ChartPoint],
                       title: str) -> Figure:
    """Static Fig. 1. ``rows``: ``(row title, one TokenAttention per view)`` per model; ``image`` ``[H, W, 3]``."""
    fig = Figure(figsize=(10.5, 12.5), layout="constrained")
    top, bottom = np.asarray(fig.subfigures(2, 1, height_ratios=[3.4, 1.0])).ravel()
    grid = top.add_gridspec(2 * len(rows), len(views), height_ratios=[4.0, 1.2] * len(rows))
    ymax = 1.1 * max(max(float(w.max()) for _, w in _bar_groups(ta)) for _, tas in rows for ta in tas)
    for m, (row_title, tas) in enumerate(rows):
        for j, (view, ta) in enumerate(zip(views, tas, strict=True)):
            ax = top.add_subplot(grid[2 * m, j])
            plot_overlay_matplotlib(image, ta.grid[0], box=view.box, colorbar=False, ax=ax,
                                    title=f"{view.title}\npatch keys {float(ta.grid[0].sum()):.3f}")
            if object_box is not None:
                x0, y0, x1, y1 = object_box
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                                       linestyle="--", linewidth=1.0))
            if j == 0:
                ax.set_ylabel(row_title, fontsize="large")
            _draw_bars(top.add_subplot(grid[2 * m + 1, j]), ta, ymax if ymax > 0 else 1.0)
    top.suptitle(title, fontsize="medium")
    compared = _compare_only(points)
    if compared is not None:
        draw_compare_matplotlib(bottom.add_subplot(), compared)
    else:
        _time_accuracy_matplotlib(bottom.add_subplot(), points)
    return fig


def figure1_plotly(image: np.ndarray, views: Sequence[QueryView], rows: Sequence[tuple[str, list[TokenAttention]]],
                   object_box: tuple[float, float, float, float] | None, points: Sequence[ChartPoint],
                   title: str) -> Any:
    """Interactive Fig. 1 (hover gives each patch's and prompt column's weight)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n_rows, n_cols = 2 * len(rows) + 1, len(views)
    specs: list[list[dict[str, Any] | None]] = [[{} for _ in views] for _ in range(2 * len(rows))]
    specs.append([{"colspan": n_cols}] + [None] * (n_cols - 1))
    titles = []
    for row_title, tas in rows:
        label = row_title.replace("\n", " ")
        titles += [f"<b>{label}</b><br>{v.title}, patch keys {float(ta.grid[0].sum()):.3f}"
                   for v, ta in zip(views, tas, strict=True)]
        titles += [f"prompts {float(ta.prompt_total()[0]):.3f}, row sum {float(ta.row_sum[0]):.3f}" for ta in tas]
    titles.append("time per epoch vs accuracy")
    fig = make_subplots(rows=n_rows, cols=n_cols, specs=specs, subplot_titles=titles, vertical_spacing=0.045,
                        horizontal_spacing=0.05, row_heights=[0.24, 0.07] * len(rows) + [0.3])
    height, width = image.shape[:2]
    shown_groups: set[str] = set()
    for m, (_, tas) in enumerate(rows):
        for j, (view, ta) in enumerate(zip(views, tas, strict=True)):
            r, c = 2 * m + 1, j + 1
            overlay = plot_overlay_plotly(image, ta.grid[0], box=view.box)
            for trace in overlay.data:
                if isinstance(trace, go.Heatmap):
                    trace.showscale = False
                fig.add_trace(trace, row=r, col=c)
            for shape in overlay.layout.shapes:
                fig.add_shape(shape, row=r, col=c)
            if object_box is not None:
                x0, y0, x1, y1 = object_box
                fig.add_shape(type="rect", x0=x0 - 0.5, y0=y0 - 0.5, x1=x1 - 0.5, y1=y1 - 0.5,
                              line=dict(color="white", width=1, dash="dash"), row=r, col=c)
            anchor = fig.get_subplot(r, c).yaxis.anchor
            fig.update_xaxes(visible=False, range=[-0.5, width - 0.5], constrain="domain", row=r, col=c)
            fig.update_yaxes(visible=False, range=[height - 0.5, -0.5], scaleanchor=anchor, constrain="domain",
                             row=r, col=c)
            x = 0
            for group, weights in _bar_groups(ta):
                fig.add_trace(go.Bar(
                    x=np.arange(x, x + weights.size), y=weights, marker_color=GROUP_COLORS[group],
                    name=GROUP_TITLES[group], legendgroup=group, showlegend=group not in shown_groups,
                    hovertemplate=f"{GROUP_TITLES[group]} key %{{x}}<br>attention %{{y:.4g}}<extra></extra>",
                ), row=r + 1, col=c)
                shown_groups.add(group)
                x += weights.size + 1
            fig.update_xaxes(showticklabels=False, row=r + 1, col=c)
    last = n_rows
    for p in points:
        fig.add_trace(go.Scatter(
            x=[p.seconds_per_epoch], y=[100 * p.accuracy], mode="markers+text", text=[p.label],
            textposition="middle right", name=p.label, showlegend=False,
            marker=dict(size=16 if p.tcpa_family else 11, symbol="star" if p.tcpa_family else "circle"),
            hovertemplate=f"{p.label}<br>%{{x:.2f}} s/epoch<br>{p.metric} accuracy %{{y:.2f}}%<extra></extra>",
        ), row=last, col=1)
    metric = points[0].metric if points else "test"
    xrange, yrange = _chart_ranges(points)
    fig.update_xaxes(title_text="training time per epoch (s)", range=xrange, row=last, col=1)
    fig.update_yaxes(title_text=f"{metric} accuracy (%)", range=yrange, row=last, col=1)
    compared = _compare_only(points)
    if compared is not None:
        decorate_compare_plotly(fig, compared, row=last, col=1)
    fig.update_layout(title=dict(text=title.replace("\n", "<br>"), font=dict(size=13)), width=1100, height=1400,
                      barmode="overlay", margin=dict(t=165))
    return fig


def figure1(
    baseline: ModelRef | None = None,
    tcpa: ModelRef | None = None,
    out_dir: str | Path | None = None,
    data: DataSpec | Dataset | None = None,
    index: int | None = None,
    layer: int = -1,
    summary: str | Path | Mapping[str, Any] | None = None,
    demo_dir: str | Path = DEFAULT_DEMO_DIR,
    stem: str = "figure1",
    compare: str | Path | None = None,
) -> list[Path]:
    """Write Fig. 1 as ``<stem>.png`` and ``<stem>.html``; returns the two paths.

    Args:
        baseline, tcpa: checkpoints (paths or loaded); default: those of ``demo_dir``.
        out_dir: output folder (default ``<demo_dir>/figures``).
        data: a :class:`DataSpec` or dataset (default: the test split of the baseline's training dataset).
        index: sample to show (default: the first of the first 32 that both models classify correctly).
        layer: block whose attention is shown (default the last).
        summary: the demo's ``summary.json`` (path or dict) for the time/accuracy chart (default: the one in
            ``demo_dir`` when it exists, else each run's own summary).
        demo_dir: the demo folder for the defaults.
        stem: file name without extension.
        compare: a ``tcpa-viz compare`` ``compare.csv``; the chart then shows every method in it (mean and std
            over seeds). Default: ``<demo_dir>/compare.csv`` or ``<demo_dir>/compare/compare.csv`` when present.
    """
    ctx = figure_context(baseline, tcpa, data, demo_dir, index, choose=True)
    base, tc, dataset, index = ctx.baseline, ctx.tcpa, ctx.data, int(ctx.index or 0)
    names = class_names(dataset)
    depth = base.depth
    patches = query_patches(dataset, index, base.model, base.grid_size)
    views = query_views(patches)
    image = display_image(ModelInputs(dataset, base.model, [index]).batch()[0], base.data_config)
    rows: list[tuple[str, list[TokenAttention]]] = []
    for loaded in ctx.models:
        images = ModelInputs(dataset, loaded.model, [index]).batch()
        attn, _, layout = capture_attention(loaded.model, images, layers=[layer])
        (weights,) = attn.values()
        predicted = int(predict(loaded.model, images)[0])
        rows.append((_row_title(loaded, predicted, names), [token_attention(weights, layout, v.query) for v in views]))
    compare = compare or find_compare_csv(demo_dir)
    points: list[ChartPoint] = []
    points += compare_points(compare) if compare else timing_points(base, tc, _read_summary(summary, demo_dir))
    label = int(labels_of(dataset)[index])
    label_name = names[label] if names and label < len(names) else str(label)
    block = layer % depth
    title = (f"Fig. 1: attention of one query token, block {block + 1}/{depth}, mean over heads; sample {index} "
             f"(class {label_name}); object patch at the {patches.source}\n"
             "maps: patch-key weights, min-max scaled per map; red box: query patch, dashed: ground-truth box\n"
             "bars: weights on the CLS key and every prompt key column")
    out = Path(out_dir) if out_dir is not None else Path(demo_dir) / FIGURES_SUBDIR
    return write_figures(out, stem, figure1_matplotlib(image, views, rows, patches.object_box, points, title),
                         figure1_plotly(image, views, rows, patches.object_box, points, title))
