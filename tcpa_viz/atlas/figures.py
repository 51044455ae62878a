"""Atlas and importance figures: each builder returns a matplotlib ``Figure`` (PNG/PDF) and, where an
interactive version helps, a plotly figure (HTML). Built without pyplot (no global state)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from .stats import PromptAtlas

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from .importance import ImportanceResult

POOL_TITLES = {"cls": "CLS pool", "image": "image pool"}
MEASURES = (("selected", "any rank"), ("top1", "top-1"), ("rank_weighted", "rank-weighted"))


def _pools(atlas: PromptAtlas) -> list[str]:
    return [p for p in ("cls", "image") if (atlas.layers[0], p) in atlas.counts]


def usage_matrix(atlas: PromptAtlas, pool: str, measure: str) -> np.ndarray:
    """``[layers, entries]`` share of tokens: ``selected`` / ``top1`` / ``rank_weighted`` count over tokens."""
    return np.stack([getattr(atlas.counts[(layer, pool)], measure) / max(atlas.counts[(layer, pool)].num_tokens, 1)
                     for layer in atlas.layers])


def usage_heatmap(atlas: PromptAtlas) -> tuple[Figure, go.Figure]:
    """Rows: any-rank, top-1, rank-weighted share; columns: pools; each a layers x entries heatmap."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pools = _pools(atlas)
    fig = Figure(figsize=(5.5 * len(pools), 2.0 + 1.9 * len(MEASURES) * max(len(atlas.layers), 3) / 6),
                 layout="constrained")
    axes = fig.subplots(len(MEASURES), len(pools), squeeze=False)
    titles = [f"{POOL_TITLES[p]}: {label}" for _, label in MEASURES for p in pools]
    pfig = make_subplots(rows=len(MEASURES), cols=len(pools), subplot_titles=titles)
    for i, (measure, label) in enumerate(MEASURES):
        for j, p in enumerate(pools):
            m = usage_matrix(atlas, p, measure)
            ax = axes[i, j]
            im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0)
            ax.set_title(f"{POOL_TITLES[p]}: {label} share", fontsize=9)
            ax.set_yticks(range(len(atlas.layers)), [str(x) for x in atlas.layers])
            ax.set_ylabel("block")
            ax.set_xlabel("entry")
            fig.colorbar(im, ax=ax, fraction=0.04)
            pfig.add_trace(go.Heatmap(z=m, y=[str(x) for x in atlas.layers], coloraxis=None, showscale=False,
                                      hovertemplate="block %{y} entry %{x}: %{z:.3f}<extra></extra>"), i + 1, j + 1)
    fig.suptitle(f"Prompt usage over {atlas.num_images} images (share of tokens choosing each entry)")
    pfig.update_layout(title="Prompt usage (share of tokens)", height=300 * len(MEASURES))
    return fig, pfig


def usage_by_class(atlas: PromptAtlas) -> tuple[Figure, go.Figure]:
    """Per block and pool: top-1 share of each entry among the tokens of each class (classes x entries)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pools, layers = _pools(atlas), atlas.layers
    names = atlas.class_names or [str(c) for c in range(atlas.num_classes)]
    fig = Figure(figsize=(4.5 * len(pools), 2.2 * len(layers)))
    axes = fig.subplots(len(layers), len(pools), squeeze=False)
    pfig = make_subplots(rows=len(layers), cols=len(pools),
                         subplot_titles=[f"block {x} {POOL_TITLES[p]}" for x in layers for p in pools])
    for i, layer in enumerate(layers):
        for j, p in enumerate(pools):
            c = atlas.counts[(layer, p)]
            m = c.arrays["class_top1"] / np.maximum(c.arrays["class_tokens"][:, None], 1)
            ax = axes[i, j]
            im = ax.imshow(m, aspect="auto", cmap="magma", vmin=0, vmax=1)
            ax.set_title(f"block {layer} {POOL_TITLES[p]}: top-1 share per class", fontsize=8)
            ax.set_yticks(range(len(names)), names, fontsize=6)
            ax.set_xlabel("entry", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.04)
            pfig.add_trace(go.Heatmap(z=m, y=names, zmin=0, zmax=1, showscale=False,
                                      hovertemplate="class %{y} entry %{x}: %{z:.3f}<extra></extra>"), i + 1, j + 1)
    fig.tight_layout()
    pfig.update_layout(title="Top-1 share per class", height=260 * len(layers))
    return fig, pfig


def object_background(atlas: PromptAtlas) -> tuple[Figure, go.Figure] | None:
    """Image pool, per block: top-1 share of each entry among object and among background patches (None
    without boxes)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not atlas.has_boxes:
        return None
    layers = atlas.layers
    cols = min(3, len(layers))
    rows = (len(layers) + cols - 1) // cols
    fig = Figure(figsize=(5 * cols, 2.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    pfig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"block {x}" for x in layers])
    for i, layer in enumerate(layers):
        c = atlas.counts[(layer, "image")]
        share = c.arrays["region_top1"] / np.maximum(c.arrays["region_tokens"][:, None], 1)
        x = np.arange(c.size)
        ax = axes[i]
        ax.bar(x - 0.2, share[0], 0.4, label="object patches", color="#d62728")
        ax.bar(x + 0.2, share[1], 0.4, label="background patches", color="#7f7f7f")
        nmi = atlas.block_stats(layer, "image")["nmi_object_top1"]
        ax.set_title(f"block {layer}: NMI(top-1; object) {nmi['nmi']:.3f} (chance {nmi['chance']:.3f})", fontsize=8)
        ax.set_xticks(x, [str(e) for e in x], fontsize=6)
        ax.set_ylabel("top-1 share", fontsize=7)
        for k, (label, color) in enumerate((("object", "#d62728"), ("background", "#7f7f7f"))):
            pfig.add_trace(go.Bar(x=x, y=share[k], name=label, marker_color=color, showlegend=i == 0,
                                  legendgroup=label), i // cols + 1, i % cols + 1)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle("Image-pool first choices on object vs background patches")
    fig.tight_layout()
    pfig.update_layout(title="Top-1 share on object vs background patches", barmode="group", height=300 * rows)
    return fig, pfig


def spatial_maps(atlas: PromptAtlas, layer: int) -> tuple[Figure, go.Figure]:
    """Image pool of one block: for every entry, the share of images in which the patch at each grid position
    chose it first (``position_top1 / images``)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    c = atlas.counts[(layer, "image")]
    h, w = atlas.grid
    maps = (c.arrays["position_top1"].T / max(c.num_images, 1)).reshape(c.size, h, w)
    cols = min(6, c.size)
    rows = (c.size + cols - 1) // cols
    fig = Figure(figsize=(1.9 * cols, 2.0 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    pfig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"entry {e}" for e in range(c.size)])
    vmax = float(maps.max()) or 1.0
    for e in range(c.size):
        ax = axes[e]
        im = ax.imshow(maps[e], cmap="inferno", vmin=0, vmax=vmax)
        ax.set_title(f"entry {e} ({100 * c.top1[e] / max(c.num_tokens, 1):.1f}%)", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        pfig.add_trace(go.Heatmap(z=maps[e][::-1], zmin=0, zmax=vmax, showscale=e == 0, colorscale="Inferno",
                                  hovertemplate="row %{y} col %{x}: %{z:.2f}<extra></extra>"),
                       e // cols + 1, e % cols + 1)
    for ax in axes[c.size:]:
        ax.set_visible(False)
    fig.colorbar(im, ax=list(axes[: c.size]), fraction=0.02)
    fig.suptitle(f"Block {layer}, image pool: where each entry is the first choice (share of images)")
    pfig.update_layout(title=f"Block {layer}: share of images whose patch chose the entry first",
                       height=220 * rows)
    return fig, pfig


def gallery_figure(crops: np.ndarray, records: list[list[dict[str, Any]]], layer: int, pool: str) -> Figure:
    """Grid of gallery crops ``[N, G, h, w, 3]``: one row per entry, best similarity first, each crop titled with
    its key similarity. The crops are stitched into one mosaic image (one axes instead of ``N x G``, which
    keeps drawing fast), with white gaps and white cells where an entry has fewer than ``G`` crops."""
    n, g, h, w = crops.shape[:4]
    gap = max(1, h // 8)
    white = 1.0 if np.issubdtype(crops.dtype, np.floating) else 255
    mosaic = np.full((n * (h + gap) + gap, max(g, 1) * (w + gap) + gap, 3), white, dtype=crops.dtype)
    fig = Figure(figsize=(0.8 * g + 1.2, 0.8 * n + 0.8), layout="constrained")
    ax = fig.subplots()
    for e in range(n):
        for j in range(min(g, len(records[e]))):
            top, left = gap + e * (h + gap), gap + j * (w + gap)
            mosaic[top:top + h, left:left + w] = crops[e, j]
            ax.text(left + w / 2, top - gap / 4, f"{records[e][j]['similarity']:.2f}", fontsize=5,
                    ha="center", va="bottom")
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([gap + e * (h + gap) + h / 2 for e in range(n)], [f"entry {e}" for e in range(n)], fontsize=6)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    what = "images" if pool == "cls" else "patches (with one patch of context)"
    ax.set_title(f"Block {layer} {POOL_TITLES[pool]}: top {g} {what} by key similarity", fontsize=9)
    return fig


def diagnostics_figure(atlas: PromptAtlas) -> tuple[Figure, go.Figure]:
    """Per block: distinct sets (with the uniform-random reference), dominant set / top-1 share, and the NMIs
    next to their shuffled-label chance."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pools, layers = _pools(atlas), atlas.layers
    panels = ["distinct selected sets", "dominant set / top-1 share", "NMI(selection; class)",
              "NMI(top-1; object)"]
    fig = Figure(figsize=(11, 6.5))
    axes = fig.subplots(2, 2).ravel()
    pfig = make_subplots(rows=2, cols=2, subplot_titles=panels)
    colors = {"cls": "#1f77b4", "image": "#ff7f0e"}
    for p in pools:
        st = [atlas.block_stats(layer, p) for layer in layers]
        series: list[tuple[int, str, list[float], str]] = [
            (0, f"{p}: distinct", [s["distinct_sets"] for s in st], "-"),
            (0, f"{p}: random", [s["distinct_sets_random"] for s in st], ":"),
            (1, f"{p}: dominant set", [s["dominant_set_share"] for s in st], "-"),
            (1, f"{p}: dominant top-1", [s["dominant_top1_share"] for s in st], "--"),
            (2, f"{p}: set", [s["nmi_class_set"]["nmi"] for s in st], "-"),
            (2, f"{p}: set chance", [s["nmi_class_set"]["chance"] for s in st], ":"),
        ]
        if p == "image" and atlas.has_boxes:
            series += [(3, "image: top-1", [s["nmi_object_top1"]["nmi"] for s in st], "-"),
                       (3, "image: chance", [s["nmi_object_top1"]["chance"] for s in st], ":")]
        for k, label, values, style in series:
            axes[k].plot(layers, values, style, marker="o", color=colors[p], label=label)
            pfig.add_trace(go.Scatter(x=layers, y=values, name=label, line={"color": colors[p],
                           "dash": "dot" if style == ":" else ("dash" if style == "--" else "solid")}),
                           k // 2 + 1, k % 2 + 1)
    for k, ax in enumerate(axes):
        ax.set_title(panels[k], fontsize=9)
        ax.set_xlabel("block")
        ax.legend(fontsize=6)
    axes[0].set_yscale("log")
    if not atlas.has_boxes:
        axes[3].text(0.5, 0.5, "no object boxes in this dataset", ha="center", transform=axes[3].transAxes)
    collapsed = [f"{d['layer']}{d['pool'][0].upper()}" for d in atlas.diagnostics() if d["collapse"]["collapsed"]]
    fig.suptitle("Selection diagnostics; collapsed (block+pool): " + (", ".join(collapsed) or "none"), fontsize=10)
    fig.tight_layout()
    pfig.update_yaxes(type="log", row=1, col=1)
    pfig.update_layout(title="Selection diagnostics per block", height=700)
    return fig, pfig


def importance_figure(result: ImportanceResult, top: int = 15) -> tuple[Figure, go.Figure]:
    """Left: the ``top`` entries with the largest accuracy drop (mask and remove); right: accuracy under each
    selection rule against top-k."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = Figure(figsize=(12, 0.3 * top + 2))
    ax_entries, ax_rules = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1.3]})
    pfig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3],
                         subplot_titles=["largest true-logit drops", "selection rules"])
    modes = [m for m in ("mask", "remove") if result.entries(m)]
    worst: dict[tuple[Any, str, Any], float] = {}
    for r in result.entries():
        key = (r["layer"], r["pool"], r["entry"])
        worst[key] = min(worst.get(key, np.inf), r["delta_true_logit"])
    ranked = sorted(worst, key=lambda k: worst[k])[:top]
    labels = [f"block {x} {p} {e}" for x, p, e in ranked]
    y = np.arange(len(ranked))
    for i, m in enumerate(modes):
        by_key = {(r["layer"], r["pool"], r["entry"]): r for r in result.entries(m)}
        values = [by_key[k]["delta_true_logit"] if k in by_key else 0.0 for k in ranked]
        accs = [100 * by_key[k]["delta_accuracy"] if k in by_key else 0.0 for k in ranked]
        ax_entries.barh(y + (i - 0.5) * 0.4, values, 0.4, label=m)
        for yy, v, acc in zip(y + (i - 0.5) * 0.4, values, accs, strict=True):
            ax_entries.text(v, yy, f" {acc:+.1f} pt", va="center", ha="right" if v < 0 else "left", fontsize=6)
        pfig.add_trace(go.Bar(y=labels, x=values, orientation="h", name=m, customdata=accs,
                              hovertemplate="%{y}: true logit %{x:+.3f}, accuracy %{customdata:+.2f} pt"), 1, 1)
    ax_entries.set_yticks(y, labels, fontsize=7)
    ax_entries.invert_yaxis()
    ax_entries.set_xlabel("mean change of the true-class logit (labels: change of accuracy)")
    ax_entries.axvline(0, color="k", lw=0.6)
    ax_entries.legend(fontsize=7)
    ax_entries.set_title(f"Single-entry ablations with the largest true-logit drop (base accuracy "
                         f"{100 * result.base_accuracy:.2f}%, {result.num_images} images)", fontsize=9)
    rules = result.rules()
    names = ["top-k", *[r["mode"] for r in rules]]
    accs = [100 * result.base_accuracy, *[100 * r["accuracy"] for r in rules]]
    ax_rules.bar(names, accs, color=["#2ca02c", *["#1f77b4"] * len(rules)])
    for i, a in enumerate(accs):
        ax_rules.text(i, a, f"{a:.1f}", ha="center", va="bottom", fontsize=7)
    ax_rules.set_ylabel("accuracy (%)")
    ax_rules.set_ylim(max(0.0, min(accs) - 10.0), min(100.0, max(accs) + 3.0))
    ax_rules.set_title("Selection rule in every block", fontsize=9)
    pfig.add_trace(go.Bar(x=names, y=accs, name="accuracy", showlegend=False), 1, 2)
    fig.tight_layout()
    pfig.update_layout(title="Prompt importance", height=max(400, 22 * top + 150))
    return fig, pfig
