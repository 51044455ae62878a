"""Figures of the explain report: relevance overlays side by side per model and method, faithfulness curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..models import display_image
from ..overlay import overlay_on_image

if TYPE_CHECKING:
    from .report import ModelReport

METHOD_COLORS = {"relevance": "#d62728", "rollout": "#1f77b4", "attention": "#2ca02c",
                 "integrated-gradients": "#9467bd"}


def _cells(reports: Sequence[ModelReport], shown: int) -> list[list[tuple[str, np.ndarray, Any]]]:
    """Per shown image: (title, uint8 picture, box or None) for the image and every (model, method) map."""
    rows = []
    for i in range(min(shown, len(reports[0].images))):
        first = reports[0]
        box = None if first.boxes is None else tuple(float(v) for v in first.boxes[i])
        image = display_image(first.images[i], first.loaded.data_config)
        cells = [(f"image {i}", image, box)]
        for rep in reports:
            shown_image = display_image(rep.images[i], rep.loaded.data_config)
            for method, expl in rep.explanations.items():
                auc = float(rep.results[method].auc["deletion"][i])
                title = f"{rep.loaded.label} {method}\npred {int(expl.target[i])}, deletion AUC {auc:.2f}"
                cells.append((title, overlay_on_image(shown_image, expl.patches[i]), box))
        rows.append(cells)
    return rows


def overlay_figures(reports: Sequence[ModelReport], shown: int) -> tuple[Figure, Any]:
    """Relevance maps (min-max scaled per map, jet) over the images; the ground-truth box dashed white."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = _cells(reports, shown)
    n_cols = len(rows[0]) if rows else 1
    fig = Figure(figsize=(1.9 * n_cols, 2.2 * max(len(rows), 1)), constrained_layout=True)
    axes = fig.subplots(max(len(rows), 1), n_cols, squeeze=False)
    for r, cells in enumerate(rows):
        for c, (title, picture, box) in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(picture)
            if box is not None:
                ax.add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor="white", linestyle="--", linewidth=1))
            ax.set_title(title, fontsize=6)
            ax.axis("off")
    fig.suptitle("Relevance of each model's predicted class (red = most relevant; white dashed = digit box)",
                 fontsize=9)
    titles = [t.replace("\n", "<br>") for cells in rows for t, _, _ in cells]
    pfig = make_subplots(rows=max(len(rows), 1), cols=n_cols, subplot_titles=titles, horizontal_spacing=0.01,
                         vertical_spacing=0.08)
    for r, cells in enumerate(rows):
        for c, (_, picture, box) in enumerate(cells):
            pfig.add_trace(go.Image(z=picture), row=r + 1, col=c + 1)
            if box is not None:
                pfig.add_shape(type="rect", x0=box[0] - 0.5, y0=box[1] - 0.5, x1=box[2] - 0.5, y1=box[3] - 0.5,
                               line=dict(color="white", width=1, dash="dash"), row=r + 1, col=c + 1)
    pfig.update_xaxes(visible=False)
    pfig.update_yaxes(visible=False)
    pfig.update_annotations(font_size=9)
    pfig.update_layout(width=max(170 * n_cols, 600), height=260 * max(len(rows), 1) + 80,
                       title="Relevance of each model's predicted class (white dashed = digit box)")
    return fig, pfig


def curves_figures(reports: Sequence[ModelReport]) -> tuple[Figure, Any]:
    """Mean deletion (lower is more faithful) and insertion (higher) curves per model, AUC in the legend."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kinds = ("deletion", "insertion")
    fig = Figure(figsize=(4.2 * len(reports), 6.4), constrained_layout=True)
    axes = fig.subplots(2, len(reports), squeeze=False)
    pfig = make_subplots(rows=2, cols=len(reports), subplot_titles=[
        f"{rep.loaded.label}: {kind}" for kind in kinds for rep in reports])
    for c, rep in enumerate(reports):
        for r, kind in enumerate(kinds):
            ax = axes[r][c]
            for method, res in rep.results.items():
                x, y = res.fractions.numpy(), res.curves[kind].mean(0).numpy()
                label = f"{method} (AUC {float(res.auc[kind].mean()):.3f})"
                color = METHOD_COLORS.get(method)
                ax.plot(x, y, marker="o", markersize=3, color=color, label=label)
                pfig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label, line=dict(color=color),
                                          legendgroup=f"{c}{r}", showlegend=True), row=r + 1, col=c + 1)
                if f"{kind}_random" in res.curves:
                    yr = res.curves[f"{kind}_random"].mean(0).numpy()
                    rlabel = f"random order (AUC {float(res.auc[kind + '_random'].mean()):.3f})"
                    ax.plot(x, yr, linestyle="--", color="grey", label=rlabel)
                    pfig.add_trace(go.Scatter(x=x, y=yr, mode="lines", name=rlabel, legendgroup=f"{c}{r}",
                                              line=dict(color="grey", dash="dash")), row=r + 1, col=c + 1)
            ax.set_title(f"{rep.loaded.label}: {kind} ({'lower' if kind == 'deletion' else 'higher'} is better)",
                         fontsize=9)
            ax.set_xlabel(f"fraction of patches {'removed' if kind == 'deletion' else 'inserted'}", fontsize=8)
            ax.set_ylabel("target probability", fontsize=8)
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
    n = len(reports[0].images) if reports else 0
    fig.suptitle(f"Deletion / insertion curves, mean over {n} images", fontsize=10)
    pfig.update_yaxes(range=[0, 1.02], title_text="target probability")
    pfig.update_layout(width=560 * len(reports), height=760, title=f"Deletion / insertion, mean over {n} images",
                       legend=dict(font=dict(size=9)))
    return fig, pfig
