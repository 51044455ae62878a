"""Figures of ``tcpa-viz compare``: Fig. 1's time-vs-accuracy panel over every compared method (error bars:
sample std over seeds) and a Table 3 style ablation chart (VPT-deep -> R-TCPA -> TCPA, VFPT -> VFPT+TCPA,
VP -> VP+TCPA) with the paired bootstrap intervals of each step.

Both read the outputs of :mod:`tcpa_viz.compare` (``compare.csv``, ``compare_summary.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..colors import categorical_colors
from ..compare import COMPARE_CSV, SUMMARY_JSON, display_name, method_role, read_compare_csv
from .common import write_figures

TCPA_COLOR = "#d62728"
BASE_COLOR = "#7f7f7f"


@dataclass(frozen=True)
class ComparePoint:
    """One method on the time-vs-accuracy chart: means over its seeds at the chosen learning rate (accuracy
    in [0, 1]) and their sample standard deviations (0 for one seed)."""

    label: str
    seconds_per_epoch: float
    accuracy: float
    seconds_std: float
    accuracy_std: float
    seeds: int
    role: str = "baseline"
    metric: str = "test"

    @property
    def tcpa_family(self) -> bool:
        """A method of the TCPA family (drawn as a star)."""
        return self.role == "tcpa"


def find_compare_csv(*folders: str | Path | None) -> Path | None:
    """The first ``compare.csv`` in a folder or its ``compare/`` sub-folder, or ``None``."""
    for folder in folders:
        if folder is None:
            continue
        for candidate in (Path(folder) / COMPARE_CSV, Path(folder) / "compare" / COMPARE_CSV):
            if candidate.is_file():
                return candidate
    return None


def compare_points(path: str | Path) -> list[ComparePoint]:
    """Every method of a ``compare.csv`` that has test accuracies (its chosen-lr runs), in file order."""
    rows = [r for r in read_compare_csv(path) if r["selected"] and r["test_acc"] is not None]
    points = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        acc = np.asarray([r["test_acc"] for r in mine], dtype=np.float64)
        sec = np.asarray([r["seconds_per_epoch"] for r in mine], dtype=np.float64)
        points.append(ComparePoint(
            label=mine[0].get("display_name") or display_name(method), seconds_per_epoch=float(sec.mean()),
            accuracy=float(acc.mean()), seconds_std=float(sec.std(ddof=1)) if sec.size > 1 else 0.0,
            accuracy_std=float(acc.std(ddof=1)) if acc.size > 1 else 0.0, seeds=int(acc.size),
            role=method_role(method)))
    return points


def _colors(points: Sequence[ComparePoint]) -> list[str]:
    return categorical_colors(max(1, len(points)))[:len(points)]


def compare_ranges(points: Sequence[ComparePoint]) -> tuple[list[float], list[float]]:
    """Axis ranges (seconds, accuracy %) that hold every marker, its error bars and room for labels."""
    if not points:
        return [0.0, 1.0], [0.0, 100.0]
    lo_x = min(p.seconds_per_epoch - p.seconds_std for p in points)
    hi_x = max(p.seconds_per_epoch + p.seconds_std for p in points)
    lo_y = min(100 * (p.accuracy - p.accuracy_std) for p in points)
    hi_y = max(100 * (p.accuracy + p.accuracy_std) for p in points)
    xpad, ypad = max(0.5, 0.1 * (hi_x - lo_x)), max(1.5, 0.08 * (hi_y - lo_y))
    return [max(0.0, lo_x - xpad), hi_x + 2.5 * xpad], [lo_y - ypad, min(100.0, hi_y) + ypad]


def _seeds_note(points: Sequence[ComparePoint]) -> str:
    counts = sorted({p.seeds for p in points})
    return f"mean ± std over {'/'.join(map(str, counts))} seed{'s' if counts != [1] else ''}"


def draw_compare_matplotlib(ax: Any, points: Sequence[ComparePoint]) -> None:
    """Seconds per epoch vs test accuracy of every method, with error bars (std over seeds) both ways."""
    if not points:
        ax.text(0.5, 0.5, "compare.csv holds no method with a test accuracy", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    for p, color in zip(points, _colors(points), strict=True):
        ax.errorbar(p.seconds_per_epoch, 100 * p.accuracy, xerr=p.seconds_std, yerr=100 * p.accuracy_std,
                    fmt="*" if p.tcpa_family else "o", markersize=13 if p.tcpa_family else 8, color=color, capsize=3,
                    zorder=3, label=f"{p.label}: {100 * p.accuracy:.1f} ± {100 * p.accuracy_std:.1f}%, "
                                    f"{p.seconds_per_epoch:.1f} s")
    xrange, yrange = compare_ranges(points)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False,
              title="method: test acc, s / epoch", title_fontsize="small")
    ax.set_xlim(*xrange)
    ax.set_ylim(*yrange)
    ax.set_xlabel("training time per epoch (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"time per epoch vs accuracy, {len(points)} methods ({_seeds_note(points)})", fontsize="medium")


def decorate_compare_plotly(fig: Any, points: Sequence[ComparePoint], row: int, col: int) -> None:
    """Turn the time/accuracy markers just added to subplot ``(row, col)`` (the last ``len(points)`` traces, one
    per point, named by its label) into the compare chart: error bars (std over seeds), colours, hover, ranges."""
    traces = fig.data[-len(points):] if points else ()
    if [t.name for t in traces] != [p.label for p in points]:
        raise ValueError("the last traces of the figure are not the time/accuracy markers of these points")
    for trace, p, color in zip(traces, points, _colors(points), strict=True):
        trace.error_x = dict(type="data", array=[p.seconds_std], visible=True)
        trace.error_y = dict(type="data", array=[100 * p.accuracy_std], visible=True)
        trace.marker.color = color
        trace.hovertemplate = (f"{p.label}<br>%{{x:.2f}} ± {p.seconds_std:.2f} s/epoch<br>test accuracy %{{y:.2f}} ± "
                               f"{100 * p.accuracy_std:.2f}%<br>{p.seeds} seed(s)<extra></extra>")
    xrange, yrange = compare_ranges(points)
    fig.update_xaxes(range=xrange, row=row, col=col)
    fig.update_yaxes(title_text=f"test accuracy (%), {_seeds_note(points)}", range=yrange, row=row, col=col)


# ------------------------------------------------------------------------------------------ Table 3
@dataclass(frozen=True)
class ChainStep:
    """One bar of the ablation chart; ``delta``/``low``/``high`` (fractions) compare it with the previous step
    of its chain (``None`` for the first)."""

    method: str
    label: str
    accuracy: float
    std: float
    delta: float | None = None
    low: float | None = None
    high: float | None = None


def table3_steps(summary: Mapping[str, Any]) -> list[list[ChainStep]]:
    """The chains of ``summary["table3"]`` with each step's accuracy and its interval against the previous step."""
    methods = summary["methods"]
    pairs = {(p["a"], p["b"]): p for p in summary.get("pairs", [])}
    chains = []
    for chain in summary.get("table3", []):
        steps = []
        for i, m in enumerate(chain):
            info = methods[m]
            pair = pairs.get((m, chain[i - 1])) if i else None
            steps.append(ChainStep(m, info["display_name"], info["test_acc_mean"], info["test_acc_std"] or 0.0,
                                   *((pair["difference"], pair["low"], pair["high"]) if pair else (None, None, None))))
        chains.append(steps)
    return chains


def _step_text(step: ChainStep) -> str:
    text = f"{100 * step.accuracy:6.2f} ± {100 * step.std:4.2f}"
    if step.delta is not None and step.low is not None and step.high is not None:
        text += f"   Δ {100 * step.delta:+.2f} pp  CI [{100 * step.low:+.2f}, {100 * step.high:+.2f}]"
    return text


def table3_matplotlib(chains: Sequence[Sequence[ChainStep]], title: str) -> Figure:
    """Horizontal bars (mean ± std over seeds), one group per chain, and beside them a text column with each
    step's accuracy and its difference from the previous step with the paired bootstrap interval."""
    steps = [(step, i) for i, chain in enumerate(chains) for step in chain]
    fig = Figure(figsize=(10.0, 0.5 * max(1, len(steps)) + 0.4 * len(chains) + 1.4), layout="constrained")
    if not steps:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no Table 3 chain among the compared methods", ha="center", va="center")
        ax.set_axis_off()
        return fig
    bars, notes = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.0, 0.8]})
    ys = [j + 0.6 * i for j, (_, i) in enumerate(steps)]
    values = [100 * s.accuracy for s, _ in steps]
    errors = [100 * s.std for s, _ in steps]
    colors = [TCPA_COLOR if method_role(s.method) == "tcpa" else BASE_COLOR for s, _ in steps]
    bars.barh(ys, values, xerr=errors, color=colors, capsize=3, height=0.7)
    low = max(0.0, 5 * np.floor((min(v - e for v, e in zip(values, errors, strict=True)) - 5) / 5))
    bars.set_xlim(low, 100)
    bars.set_yticks(ys, [s.label for s, _ in steps])
    bars.invert_yaxis()
    bars.grid(True, axis="x", alpha=0.3)
    bars.set_xlabel("test accuracy (%), mean ± std over seeds")
    notes.set_axis_off()
    notes.set_xlim(0, 1)
    for y, (step, _) in zip(ys, steps, strict=True):
        notes.text(0.0, y, _step_text(step), va="center", fontsize="small", family="monospace")
    fig.suptitle(title, fontsize="medium")
    return fig


def table3_plotly(chains: Sequence[Sequence[ChainStep]], title: str) -> Any:
    """Interactive version of :func:`table3_matplotlib` (hover: accuracy, Δ and interval)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    order: list[str] = []
    for chain in chains:
        for step in chain:
            order.append(step.label)
            fig.add_trace(go.Bar(
                x=[100 * step.accuracy], y=[step.label], orientation="h", name=step.label, showlegend=False,
                error_x=dict(type="data", array=[100 * step.std], visible=True), text=[_step_text(step)],
                textposition="outside", marker_color=TCPA_COLOR if method_role(step.method) == "tcpa" else BASE_COLOR,
                hovertemplate=f"{step.label}<br>{_step_text(step)}<extra></extra>",
            ))
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1])
    fig.update_xaxes(title_text="test accuracy (%), mean ± std over seeds")
    fig.update_layout(title=title, height=120 + 45 * max(1, len(order)), width=1000, margin=dict(l=120, r=40))
    return fig


def write_table3(summary: Mapping[str, Any] | str | Path, out_dir: str | Path, stem: str = "table3") -> list[Path]:
    """Write the ablation chart (``<stem>.png``, ``<stem>.html``) from a compare summary (dict or JSON path)."""
    if isinstance(summary, Mapping):
        data: Mapping[str, Any] = summary
    else:
        path = Path(summary)
        data = json.loads((path / SUMMARY_JSON if path.is_dir() else path).read_text())
    chains = table3_steps(data)
    seeds = data["config"]["seeds"]
    title = (f"Table 3 style ablation: test accuracy over seeds {', '.join(map(str, seeds))}; "
             "Δ vs the previous step with its paired bootstrap CI")
    return write_figures(out_dir, stem, table3_matplotlib(chains, title), table3_plotly(chains, title))


__all__ = [
    "ChainStep", "ComparePoint", "compare_points", "compare_ranges", "decorate_compare_plotly",
    "draw_compare_matplotlib", "find_compare_csv", "table3_matplotlib", "table3_plotly", "table3_steps", "write_table3",
]
