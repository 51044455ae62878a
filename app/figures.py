"""Figures specific to the dashboard (plotly for the page and the HTML export, matplotlib twins for PNG export).

The generic figures (attention overlays, heatmaps, surfaces, pool usage, t-SNE, rank) come from
:mod:`tcpa_viz`; this module adds the pictures of the patch panels (:class:`PatchPanel`, drawn on the page by
:mod:`app.patch_panels`) and their plotly twins, the layer x pool-entry table of one token's prompt choices, the
image coloured by selected prompt, the attention matrices and the TCPA mask.
"""

from __future__ import annotations

import base64
import csv
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib.colors as mcolors
import numpy as np
import plotly.graph_objects as go
from matplotlib.figure import Figure

from tcpa_viz import as_rgb_uint8, overlay_on_image
from tcpa_viz.colors import categorical_colors, get_cmap, plotly_colorscale
from tcpa_viz.heatmap import group_ticks

if TYPE_CHECKING:
    from tcpa_core import TokenLayout

SELECTED_COLOUR = "red"
PANEL_WIDTH_PX, TICK_SPACING_PX = 1000, 11
"""Width of a row of matrix panels on a wide page and the room one rotated 8 px tick label needs: the prefix and
prompt columns get only as many labels as fit side by side (:func:`spaced_ticks`; the CSV export names every
column)."""


def patch_customdata(h: int, w: int) -> np.ndarray:
    """``[h * w, 4]`` custom data of the clickable patch markers, row-major: ``(row, col, h, w)`` (the grid the
    chart is drawn for travels with every click, so ``state.grid_click`` can refuse a stale one)."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows.ravel(), cols.ravel(), np.full(h * w, h), np.full(h * w, w)], axis=-1)


def image_grid_figure(display: np.ndarray, grid_size: tuple[int, int], selected: tuple[int, int],
                      title: str = "") -> go.Figure:
    """The image with its patch grid and the selected patch boxed; clicking a patch reports its
    ``(row, col, h, w)`` as the point's custom data."""
    img = as_rgb_uint8(display)
    height, width = img.shape[:2]
    h, w = grid_size
    dy, dx = height / h, width / w
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    line_x: list[float | None] = []
    line_y: list[float | None] = []
    for r in range(1, h):
        line_x += [-0.5, width - 0.5, None]
        line_y += [r * dy - 0.5, r * dy - 0.5, None]
    for c in range(1, w):
        line_x += [c * dx - 0.5, c * dx - 0.5, None]
        line_y += [-0.5, height - 0.5, None]
    r, c = selected
    box_x = [c * dx - 0.5, (c + 1) * dx - 0.5, (c + 1) * dx - 0.5, c * dx - 0.5, c * dx - 0.5]
    box_y = [r * dy - 0.5, r * dy - 0.5, (r + 1) * dy - 0.5, (r + 1) * dy - 0.5, r * dy - 0.5]
    data = [
        dict(type="image", source=png_data_uri(img), hoverinfo="skip"),
        dict(type="scatter", x=line_x, y=line_y, mode="lines", line=dict(color="rgba(255,255,255,0.55)", width=1),
             hoverinfo="skip", showlegend=False),
        dict(type="scatter", x=box_x, y=box_y, mode="lines", line=dict(color=SELECTED_COLOUR, width=3),
             hoverinfo="skip", showlegend=False),
        dict(type="scatter", x=((cols + 0.5) * dx - 0.5).ravel(), y=((rows + 0.5) * dy - 0.5).ravel(),
             mode="markers", customdata=patch_customdata(h, w), showlegend=False,
             marker=dict(symbol="square", size=max(6, min(40, int(360 / max(h, w)))), opacity=0.01, color="white"),
             hovertemplate="patch (%{customdata[0]}, %{customdata[1]})<extra></extra>"),
    ]
    layout = dict(
        title=dict(text=title), height=420, margin=dict(l=5, r=5, t=40, b=5), dragmode=False,
        clickmode="event+select", xaxis=dict(visible=False, range=[-0.5, width - 0.5]),
        yaxis=dict(visible=False, range=[height - 0.5, -0.5], scaleanchor="x"),
    )
    return go.Figure(data=data, layout=layout)


def image_grid_matplotlib(display: np.ndarray, grid_size: tuple[int, int], selected: tuple[int, int],
                          title: str = "") -> Figure:
    """Static version of :func:`image_grid_figure`."""
    from matplotlib.patches import Rectangle

    img = as_rgb_uint8(display)
    height, width = img.shape[:2]
    h, w = grid_size
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(img, interpolation="nearest")
    for r in range(1, h):
        ax.axhline(r * height / h - 0.5, color="white", alpha=0.5, linewidth=0.8)
    for c in range(1, w):
        ax.axvline(c * width / w - 0.5, color="white", alpha=0.5, linewidth=0.8)
    r, c = selected
    ax.add_patch(Rectangle((c * width / w - 0.5, r * height / h - 0.5), width / w, height / h, fill=False,
                           edgecolor=SELECTED_COLOUR, linewidth=2.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return fig


def rank_matrix(assign: np.ndarray, pool_size: int) -> np.ndarray:
    """``[layers, pool_size]`` int: 1-based rank of each entry in a token's top-k list per layer, 0 if not chosen.

    ``assign`` is ``[layers, k]`` (entries in ``torch.topk`` order, most similar first).
    """
    out = np.zeros((assign.shape[0], pool_size), dtype=np.int64)
    for layer, entries in enumerate(np.asarray(assign, dtype=np.int64)):
        out[layer, entries] = np.arange(1, len(entries) + 1)
    return out


def rank_strength(assign: np.ndarray, pool_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ranks, strength)`` of :func:`rank_matrix`: the 1-based ranks ``[layers, pool_size]`` and their shade,
    1 for rank 1 down to ``1/k`` for rank ``k``, 0 where the entry was not chosen."""
    ranks = rank_matrix(assign, pool_size)
    k = max(int(ranks.max()), 1)
    return ranks, np.where(ranks > 0, (k + 1 - ranks) / k, 0.0)


def selection_table_figure(assign: np.ndarray, pool_size: int, title: str, highlight: int | None = None,
                           pool: str = "image") -> go.Figure:
    """Layer x pool-entry heatmap of one token's choices; cells show the rank (1 = most similar key)."""
    ranks, strength = rank_strength(assign, pool_size)
    text = np.where(ranks > 0, ranks.astype(str), "")
    short = "img" if pool == "image" else "cls"
    scale = "Blues" if pool == "image" else "Reds"
    fig = go.Figure(go.Heatmap(
        z=strength, x=[f"{short} {e}" for e in range(pool_size)], y=list(range(ranks.shape[0])), text=text,
        texttemplate="%{text}",
        colorscale=scale, zmin=0, zmax=1, showscale=False, xgap=1, ygap=1, customdata=ranks,
        hovertemplate="layer %{y}<br>%{x}<br>rank %{customdata} (1 = most similar key)<extra></extra>",
    ))
    if highlight is not None:
        fig.add_shape(type="rect", x0=-0.5, x1=pool_size - 0.5, y0=highlight - 0.5, y1=highlight + 0.5,
                      line=dict(color=SELECTED_COLOUR, width=2))
    fig.update_xaxes(title_text=f"{pool}-pool entry (cell: rank in the top-k list, 1 = most similar)",
                     type="category", tickangle=-45)
    fig.update_yaxes(title_text="layer", autorange="reversed", dtick=1)
    fig.update_layout(title=dict(text=title), height=max(260, 34 * ranks.shape[0] + 120),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def selection_table_html(assign: np.ndarray, pool_size: int, title: str, highlight: int | None = None,
                         pool: str = "image") -> str:
    """The table of :func:`selection_table_figure` as an HTML table (layers down, pool entries across, the rank
    written in every chosen cell and shaded by it, the row ``highlight`` outlined; hovering a cell names it).

    The page shows this table rather than the chart: the browser lays out a small table in a few
    milliseconds, while a plotly heatmap with a text label per cell costs a chart redraw on every click."""
    ranks, strength = rank_strength(assign, pool_size)
    cmap = get_cmap("Blues" if pool == "image" else "Reds")
    short = "img" if pool == "image" else "cls"
    cell = "padding:1px 3px;text-align:center;min-width:2.2em"
    head = "".join(f"<th style='{cell};font-weight:normal;font-size:0.75em'>{short} {e}</th>" for e in range(pool_size))
    rows = []
    for layer, (ranked, shade) in enumerate(zip(ranks, strength, strict=True)):
        outline = f"outline:2px solid {SELECTED_COLOUR};" if layer == highlight else ""
        cells = []
        for entry, (rank, value) in enumerate(zip(ranked, shade, strict=True)):
            colour = mcolors.to_hex(cmap(0.15 + 0.85 * value)) if rank else "#ffffff"
            text = "white" if value > 0.55 else "black"
            tip = f"layer {layer}, {short} {entry}: " + (f"rank {rank}" if rank else "not selected")
            cells.append(f"<td title='{tip}' style='{cell};background:{colour};color:{text}'>{rank or ''}</td>")
        rows.append(f"<tr style='{outline}'><th style='{cell};font-weight:normal'>{layer}</th>{''.join(cells)}</tr>")
    return (f"<div style='overflow-x:auto'><div style='font-weight:600;margin-bottom:4px'>{title}</div>"
            "<table style='border-collapse:collapse;font-size:0.85em'>"
            f"<tr><th style='{cell};font-weight:normal;font-size:0.75em'>layer</th>{head}</tr>{''.join(rows)}</table>"
            f"<div style='font-size:0.8em;color:#555'>{pool}-pool entry across; a cell is the entry's rank in the "
            "layer's top-k list (1 = most similar key), empty = not selected.</div></div>")


def selection_table_matplotlib(assign: np.ndarray, pool_size: int, title: str, pool: str = "image") -> Figure:
    """Static version of :func:`selection_table_figure`."""
    ranks, strength = rank_strength(assign, pool_size)
    fig = Figure(figsize=(max(5.0, 0.32 * pool_size + 1.5), max(2.5, 0.4 * ranks.shape[0] + 1.2)),
                 layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(strength, cmap="Blues" if pool == "image" else "Reds", vmin=0, vmax=1, aspect="auto",
              interpolation="nearest")
    for (layer, entry), rank in np.ndenumerate(ranks):
        if rank:
            ax.text(entry, layer, str(rank), ha="center", va="center", fontsize="x-small",
                    color="white" if strength[layer, entry] > 0.5 else "black")
    ax.set_xticks(range(pool_size), [f"{'img' if pool == 'image' else 'cls'} {e}" for e in range(pool_size)],
                  rotation=90)
    ax.set_yticks(range(ranks.shape[0]))
    ax.tick_params(labelsize="x-small")
    ax.set_xlabel(f"{pool}-pool entry")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize="medium")
    return fig


def selection_values(image_assign: np.ndarray, grid_size: tuple[int, int], mode: str, rank: int
                     ) -> tuple[np.ndarray, list[str]]:
    """``([h, w] category index, category labels)`` of one layer's choices ``[Np, k]``.

    ``top1``: the entry each patch chose at ``rank`` (1-based), labelled ``img 11``; ``set``: patches that chose
    the same set of entries share a category, numbered by first appearance (``set 1``, ``set 2`` ...; a set id
    has no order, so the colours are categorical, never a continuous scale).
    """
    h, w = grid_size
    assign = np.asarray(image_assign, dtype=np.int64)
    if mode == "top1":
        keys = [int(v) for v in assign[:, rank - 1]]
        uniques = sorted(set(keys))
        labels = [f"img {u}" for u in uniques]
        index = np.array([uniques.index(k) for k in keys])
    else:
        sets = [tuple(sorted(int(v) for v in row)) for row in assign]
        order = list(dict.fromkeys(sets))
        labels = [f"set {i + 1}" for i in range(len(order))]
        index = np.array([order.index(t) for t in sets])
    return index.reshape(h, w), labels


def selection_map_figure(image_assign: np.ndarray, layout: TokenLayout, display: np.ndarray, mode: str,
                         rank: int, title: str, alpha: float = 0.55) -> go.Figure:
    """The image with every patch coloured by what it selected (categorical colours, every cell labelled)."""
    h, w = layout.grid_size
    index, labels = selection_values(image_assign, (h, w), mode, rank)
    n = len(labels)
    colours = categorical_colors(n)
    scale = []
    for i, colour in enumerate(colours):
        scale += [[i / n, colour], [(i + 1) / n, colour]]
    img = as_rgb_uint8(display)
    height, width = img.shape[:2]
    short = np.array([t.split(" ")[1] for t in labels])[index]
    prefix = "img" if mode == "top1" else "set"
    fig = go.Figure([
        go.Image(z=img, x0=0.5 * w / width - 0.5, dx=w / width, y0=0.5 * h / height - 0.5, dy=h / height,
                 hoverinfo="skip"),
        go.Heatmap(z=index + 0.5, zmin=0, zmax=n, colorscale=scale, opacity=alpha, text=short,
                   texttemplate="%{text}" if max(h, w) <= 16 else "", textfont=dict(size=10),
                   hovertemplate=f"patch (%{{y}}, %{{x}}): {prefix} %{{text}}<extra></extra>", xgap=1, ygap=1,
                   colorbar=dict(tickvals=[i + 0.5 for i in range(n)], ticktext=labels, thickness=12,
                                 len=min(1.0, 0.06 * n + 0.2))),
    ])
    fig.update_xaxes(range=[-0.5, w - 0.5], showgrid=False, dtick=1, title_text="patch column")
    fig.update_yaxes(range=[h - 0.5, -0.5], showgrid=False, dtick=1, scaleanchor="x", title_text="patch row")
    fig.update_layout(title=dict(text=title), height=440, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def selection_map_matplotlib(image_assign: np.ndarray, layout: TokenLayout, display: np.ndarray, mode: str,
                             rank: int, title: str) -> Figure:
    """Static version of :func:`selection_map_figure`."""
    from matplotlib.colors import ListedColormap

    h, w = layout.grid_size
    index, labels = selection_values(image_assign, (h, w), mode, rank)
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    ax.imshow(as_rgb_uint8(display), extent=extent)
    shown = ax.imshow(index, cmap=ListedColormap(categorical_colors(len(labels))), vmin=-0.5,
                      vmax=len(labels) - 0.5, alpha=0.55, extent=extent, interpolation="nearest")
    if max(h, w) <= 16:
        for (r, c), v in np.ndenumerate(index):
            ax.text(c, r, labels[v].split(" ")[1], ha="center", va="center", fontsize="x-small")
    bar = fig.colorbar(shown, ax=ax, ticks=range(len(labels)))
    bar.ax.set_yticklabels(labels, fontsize="x-small")
    ax.set_xticks(range(w))
    ax.set_yticks(range(h))
    ax.tick_params(labelsize="x-small")
    ax.set_title(title, fontsize="medium")
    return fig


def mask_figure(mask: np.ndarray, layout: TokenLayout, title: str) -> go.Figure:
    """The TCPA mask ``[query, key]`` (dark = the query may attend to the key) with token-group labels."""
    m = np.asarray(mask, dtype=np.int8)
    fig = go.Figure(go.Heatmap(
        z=m, colorscale=[[0.0, "#f2f2f2"], [0.5, "#f2f2f2"], [0.5, "#1f3b73"], [1.0, "#1f3b73"]], zmin=0, zmax=1,
        showscale=False, hovertemplate="query %{y}<br>key %{x}<br>allowed %{z}<extra></extra>",
    ))
    kx, kn, kb = group_ticks(layout.key_slices())
    qx, qn, qb = group_ticks(layout.query_slices())
    for b in kb:
        fig.add_vline(x=b, line=dict(color="orange", width=1))
    for b in qb:
        fig.add_hline(y=b, line=dict(color="orange", width=1))
    fig.update_xaxes(tickvals=kx, ticktext=kn, title_text=f"key ({m.shape[1]})")
    fig.update_yaxes(tickvals=qx, ticktext=qn, title_text=f"query ({m.shape[0]})", autorange="reversed")
    fig.update_layout(title=dict(text=title), height=420, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def mask_matplotlib(mask: np.ndarray, layout: TokenLayout, title: str) -> Figure:
    """Static version of :func:`mask_figure`."""
    from matplotlib.colors import ListedColormap

    m = np.asarray(mask, dtype=np.int8)
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(m, cmap=ListedColormap(["#f2f2f2", "#1f3b73"]), vmin=0, vmax=1, aspect="auto",
              interpolation="nearest")
    kx, kn, kb = group_ticks(layout.key_slices())
    qx, qn, qb = group_ticks(layout.query_slices())
    for b in kb:
        ax.axvline(b, color="orange", linewidth=0.8)
    for b in qb:
        ax.axhline(b, color="orange", linewidth=0.8)
    ax.set_xticks(kx, kn, rotation=30, ha="right", fontsize="small")
    ax.set_yticks(qx, qn, fontsize="small")
    ax.set_title(title)
    return fig


# ------------------------------------------------------------------------------------------ labels
def key_labels(layout: TokenLayout) -> list[str]:
    """A label for every key column: ``CLS`` / ``reg i``, ``cls i`` and ``img i`` (TCPA pool entries, with
    ``.j`` for prompt position j when prompts are longer than one token), ``prompt i`` and ``patch r,c``."""
    labels = ["CLS" if i == 0 and layout.has_cls_token else f"reg {i - int(layout.has_cls_token)}"
              for i in range(layout.num_prefix)]
    length = max(layout.prompt_length, 1)
    for short, size in (("cls", layout.num_cls_prompt_keys), ("img", layout.num_image_prompt_keys)):
        labels += [f"{short} {j // length}" + (f".{j % length}" if length > 1 else "") for j in range(size)]
    labels += [f"prompt {j}" for j in range(layout.num_shared_prompt_keys)]
    w = layout.grid_size[1]
    labels += [f"patch {p // w},{p % w}" for p in range(layout.num_patches)]
    return labels


def query_labels(layout: TokenLayout) -> list[str]:
    """A label for every query row (prefix tokens, then ``patch r,c``)."""
    keys = key_labels(layout)
    return keys[:layout.num_prefix] + keys[layout.num_keys - layout.num_patches:]


def heads_label(heads: str | int) -> str:
    """``mean over heads``, ``max over heads`` or ``head 2``."""
    return f"head {heads}" if isinstance(heads, int) else f"{heads} over heads"


# ------------------------------------------------------------------------------------------ prompt shares
def prompt_share_figure(tcpa_entries: list[tuple[str, float]], baseline_entries: list[tuple[str, float]] | None,
                        title: str, baseline_title: str = "", tcpa_title: str = "TCPA") -> go.Figure:
    """Bars of the attention share one query gives each prompt: TCPA's selected pool entries (``img 11``, in
    rank order) beside the baseline's prompts (``prompt 3``), on one shared y axis."""
    from plotly.subplots import make_subplots

    panels = [(tcpa_title, tcpa_entries, "#1f77b4")]
    if baseline_entries is not None:
        panels.append((baseline_title or "baseline", baseline_entries, "#ff7f0e"))
    widths = [max(len(entries), 1) for _, entries, _ in panels]
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, column_widths=widths,
                        subplot_titles=[name for name, _, _ in panels], horizontal_spacing=0.06)
    for i, (_, entries, colour) in enumerate(panels, start=1):
        fig.add_trace(go.Bar(x=[n for n, _ in entries], y=[v for _, v in entries], marker_color=colour,
                             showlegend=False, hovertemplate="%{x}: %{y:.4f} of the row<extra></extra>"), 1, i)
        fig.update_xaxes(type="category", tickangle=-45, row=1, col=i)
    fig.update_yaxes(title_text="attention share", row=1, col=1)
    fig.update_layout(title=dict(text=title), height=330, margin=dict(l=10, r=10, t=70, b=10), bargap=0.15)
    return fig


def prompt_share_html(tcpa_entries: list[tuple[str, float]], baseline_entries: list[tuple[str, float]] | None,
                      title: str, tcpa_title: str, baseline_title: str) -> str:
    """The bars of :func:`prompt_share_figure` as HTML: one row per prompt (its label, a bar on the scale shared
    by both models, the share written out), TCPA's selected entries in rank order beside the baseline's prompts.

    Like :func:`selection_table_html`, the page draws this in a few milliseconds where a chart costs a redraw
    on every click."""
    panels = [(tcpa_title, tcpa_entries, "#1f77b4")]
    if baseline_entries is not None:
        panels.append((baseline_title, baseline_entries, "#ff7f0e"))
    top = max((v for _, entries, _ in panels for _, v in entries), default=0.0) or 1.0
    columns = []
    for name, entries, colour in panels:
        rows = "".join(
            f"<div style='display:flex;align-items:center;gap:6px;height:1.3em' "
            f"title='{label}: {value:.4f} of the row'>"
            f"<span style='width:4.8em;text-align:right;font-size:0.85em'>{label}</span>"
            f"<span style='flex:1;background:#f0f2f6'><span style='display:block;height:0.95em;"
            f"width:{100 * max(value, 0.0) / top:.1f}%;background:{colour}'></span></span>"
            f"<span style='width:4.2em;font-size:0.8em;font-variant-numeric:tabular-nums'>{value:.4f}</span></div>"
            for label, value in entries)
        columns.append(f"<div style='flex:1;min-width:14em'><div style='font-size:0.85em;color:#555;"
                       f"margin-bottom:2px'>{name}</div>{rows or '<i>no prompts</i>'}</div>")
    return (f"<div><div style='font-weight:600;margin-bottom:4px'>{title}</div>"
            f"<div style='display:flex;gap:18px'>{''.join(columns)}</div>"
            f"<div style='font-size:0.8em;color:#555'>Bar length: share of the query's attention row, one scale for "
            f"both models (full bar = {top:.4f}).</div></div>")


# ------------------------------------------------------------------------------------------ overlays
def png_data_uri(rgb: np.ndarray) -> str:
    """``data:image/png;base64,...`` of a ``uint8 [H, W, 3]`` image.

    Charts show images as such a source: the browser decodes a PNG natively, while an image given as a pixel
    array (plotly's ``z``) is painted by plotly pixel by pixel on every redraw, two to three times slower for
    the attention overlays."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def patch_image_trace(rgb: np.ndarray, grid_size: tuple[int, int], axis: str = "") -> dict[str, object]:
    """An image trace of ``rgb [H, W, 3]`` placed in patch units (patch ``(r, c)`` centred at ``x=c, y=r``)
    on the axes ``x{axis}``/``y{axis}``, drawn with crisp pixels."""
    height, width = rgb.shape[:2]
    h, w = grid_size
    return dict(type="image", source=png_data_uri(rgb), x0=0.5 * w / width - 0.5, dx=w / width,
                y0=0.5 * h / height - 0.5, dy=h / height, xaxis=f"x{axis}", yaxis=f"y{axis}", hoverinfo="skip")


def colour_bar(cmap: str, zmin: float, zmax: float, title: str, axis: str, left: float
               ) -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
    """``(trace, x axis, y axis)`` of a colour bar for maps drawn as pre-coloured images: a one-column heatmap of
    matplotlib colormap ``cmap`` from ``zmin`` (bottom) to ``zmax`` on its own narrow axes ``x{axis}``/
    ``y{axis}`` at paper position ``left``, with the value ticks on the right.

    Plotly's own colour bars (one per trace that colours its data in the browser) cost about as much to draw
    as the three image panels they would describe."""
    values = np.linspace(zmin, zmax, 128)
    trace = dict(type="heatmap", z=values[:, None], x=[0], y=values, zmin=zmin, zmax=zmax, showscale=False,
                 colorscale=plotly_colorscale(cmap), xaxis=f"x{axis}", yaxis=f"y{axis}", hoverinfo="skip")
    x_axis = dict(domain=[left, left + 0.012], visible=False, anchor=f"y{axis}", fixedrange=True)
    y_axis = dict(domain=[0.1, 0.9], range=[zmin, zmax], anchor=f"x{axis}", side="right", ticks="outside",
                  showgrid=False, zeroline=False, tickfont=dict(size=10), fixedrange=True, nticks=6,
                  title=dict(text=title, font=dict(size=11)))
    return trace, x_axis, y_axis


def patch_markers(grid: np.ndarray, name: str, value_format: str, axis: str = "") -> dict[str, object]:
    """Invisible markers on every patch centre of ``grid [h, w]``; a click reports ``(row, col, h, w)`` as the
    point's custom data (its fifth value is the patch's value, shown on hover as ``name``)."""
    h, w = grid.shape
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    custom = np.concatenate([patch_customdata(h, w), np.asarray(grid, dtype=np.float64).reshape(-1, 1)], axis=1)
    return dict(type="scatter", x=cols.ravel(), y=rows.ravel(), mode="markers", showlegend=False,
                xaxis=f"x{axis}", yaxis=f"y{axis}",
                marker=dict(symbol="square", size=max(6, min(40, int(300 / max(h, w)))), opacity=0.01,
                            color="white"),
                customdata=custom,
                hovertemplate=f"{name}<br>patch (%{{customdata[0]}}, %{{customdata[1]}}): "
                              f"%{{customdata[4]:{value_format}}}<extra></extra>")


def _box(row: int, col: int, axis: str = "") -> dict[str, object]:
    return dict(type="rect", x0=col - 0.5, x1=col + 0.5, y0=row - 0.5, y1=row + 0.5, xref=f"x{axis}",
                yref=f"y{axis}", line=dict(color="#00e5ff", width=3))


@dataclass(frozen=True)
class PatchPanel:
    """One picture of a row of patch panels: ``picture`` ``uint8 [H, W, 3]`` covering the patch grid, its
    ``name``, and optionally the value of every patch ``values [h, w]`` (named on hover in ``value_format``)."""

    name: str
    picture: np.ndarray
    values: np.ndarray | None = None
    value_format: str = ".4f"


@dataclass(frozen=True)
class ColourBar:
    """The colour bar of matplotlib colormap ``cmap`` from ``lo`` (bottom) to ``hi``, labelled ``label``, drawn
    right of panel number ``after``."""

    cmap: str
    lo: float
    hi: float
    label: str
    after: int


def overlay_compare_panels(display: np.ndarray, grids: list[tuple[str, np.ndarray]], smooth: bool,
                           difference: bool = True) -> tuple[list[PatchPanel], list[ColourBar]]:
    """The query's attention to the patches of each model over the image, on one shared colour scale, and
    (two models, ``difference``) the map of the last minus the first on a symmetric diverging scale.

    ``grids`` are ``(name, [h, w])``. Every panel is the image with its map blended in (60 % attention, 75 %
    difference) as one picture; ``smooth=False`` draws blocky patches (the values as computed), ``True``
    interpolates bilinearly for display.
    """
    img = as_rgb_uint8(display)
    zmax = max(float(np.max(g)) for _, g in grids) or 1.0
    maps = [(name, np.asarray(grid, dtype=np.float64), 0.0, zmax, "inferno", 0.6, ".4f") for name, grid in grids]
    bars = [ColourBar("inferno", 0.0, zmax, "share", len(grids) - 1)]
    if difference and len(grids) == 2:
        diff = maps[1][1] - maps[0][1]
        bound = float(np.max(np.abs(diff))) or 1.0
        maps.append((f"{grids[1][0]} minus {grids[0][0]}", diff, -bound, bound, "RdBu_r", 0.75, "+.4f"))
        bars.append(ColourBar("RdBu_r", -bound, bound, "difference", 2))
    interpolation = "bilinear" if smooth else "nearest"
    panels = [PatchPanel(name, overlay_on_image(img, (grid - lo) / (hi - lo), cmap=cmap, alpha=alpha,
                                                normalize="none", interpolation=interpolation), grid, value_format)
              for name, grid, lo, hi, cmap, alpha, value_format in maps]
    return panels, bars


def overlay_compare_figure(panels: list[PatchPanel], bars: list[ColourBar], grid: tuple[int, int],
                           box: tuple[int, int] | None, title: str) -> go.Figure:
    """Plotly version of a row of patch panels (the HTML export of what :mod:`app.patch_panels` draws): axes
    in patch units, the selected patch ``box`` outlined, and every patch's value on hover (invisible markers
    whose custom data is ``(row, col, h, w, value)``)."""
    h, w = grid
    count = len(panels)
    spacing, right = (0.1, 0.07) if count == 3 else (0.03, 0.07)
    width = (1 - right - spacing * (count - 1)) / count
    data: list[dict[str, object]] = []
    annotations, shapes = [], []
    layout: dict[str, object] = {}
    for i, panel in enumerate(panels):
        axis = "" if i == 0 else str(i + 1)
        left = i * (width + spacing)
        layout[f"xaxis{axis}"] = dict(domain=[left, left + width], visible=False, range=[-0.5, w - 0.5],
                                      anchor=f"y{axis}")
        layout[f"yaxis{axis}"] = dict(visible=False, range=[h - 0.5, -0.5], scaleanchor=f"x{axis}",
                                      anchor=f"x{axis}")
        data.append(patch_image_trace(panel.picture, (h, w), axis))
        if panel.values is not None:
            data.append(patch_markers(panel.values, panel.name, panel.value_format, axis))
        annotations.append(dict(text=panel.name, x=left + width / 2, y=1.0, xref="paper", yref="paper",
                                xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=14)))
        if box is not None:
            shapes.append(_box(*box, axis))
    for i, bar in enumerate(bars, start=count + 1):
        left = (bar.after + 1) * (width + spacing) - spacing + 0.004
        trace, layout[f"xaxis{i}"], layout[f"yaxis{i}"] = colour_bar(bar.cmap, bar.lo, bar.hi, bar.label, str(i),
                                                                     left)
        data.append(trace)
    layout.update(title=dict(text=title), height=400, margin=dict(l=5, r=5, t=70, b=5, autoexpand=False),
                  dragmode=False, clickmode="event+select", annotations=annotations, shapes=shapes)
    return go.Figure(data=data, layout=layout)


def overlay_compare_matplotlib(display: np.ndarray, grids: list[tuple[str, np.ndarray]], box: tuple[int, int] | None,
                               smooth: bool, title: str) -> Figure:
    """Static version of :func:`overlay_compare_figure` (same shared scale and difference map)."""
    from matplotlib.patches import Rectangle

    img = as_rgb_uint8(display)
    h, w = grids[0][1].shape
    panels = list(grids)
    diff = grids[1][1] - grids[0][1] if len(grids) == 2 else None
    count = len(panels) + (diff is not None)
    fig = Figure(figsize=(4.2 * count, 4.4), layout="constrained")
    axes = fig.subplots(1, count, squeeze=False)[0]
    zmax = max(float(np.max(g)) for _, g in grids) or 1.0
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    interpolation = "bilinear" if smooth else "nearest"
    image = None
    for ax, (name, grid) in zip(axes, panels, strict=False):
        ax.imshow(img, extent=extent)
        image = ax.imshow(grid, cmap="inferno", vmin=0, vmax=zmax, alpha=0.6, extent=extent,
                          interpolation=interpolation)
        ax.set_title(name, fontsize="medium")
    if image is not None:
        fig.colorbar(image, ax=axes[:len(panels)], shrink=0.8, label="attention share")
    if diff is not None:
        bound = float(np.max(np.abs(diff))) or 1.0
        ax = axes[-1]
        ax.imshow(img, extent=extent)
        shown = ax.imshow(diff, cmap="RdBu_r", vmin=-bound, vmax=bound, alpha=0.75, extent=extent,
                          interpolation=interpolation)
        ax.set_title(f"{grids[1][0]} minus {grids[0][0]}", fontsize="medium")
        fig.colorbar(shown, ax=ax, shrink=0.8, label="difference")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        if box is not None:
            ax.add_patch(Rectangle((box[1] - 0.5, box[0] - 0.5), 1, 1, fill=False, edgecolor="#00e5ff", linewidth=2))
    fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------------ attention matrix
def _matrix_values(matrix: np.ndarray, log: bool) -> np.ndarray:
    values = np.asarray(matrix, dtype=np.float64)
    if not log:
        return values
    return np.where(values > 0, np.log10(np.maximum(values, 1e-12)), np.nan)


def matrix_figure(panels: list[tuple[str, np.ndarray, TokenLayout]], title: str, log: bool) -> go.Figure:
    """Head-reduced attention matrices ``[query, key]`` side by side on one shared colour scale; every prompt
    column is labelled by its pool entry (``img 11``, ``cls 4``, ``prompt 3``); ``log`` shows log10 of the
    weights (weights the mask set to 0 are left blank, white).

    Each matrix is sent as one picture coloured here (one pixel per weight, drawn with crisp pixels) beside one
    colour bar: as a plotly heatmap the two ViT-B matrices (about 200 x 220 weights each) were 0.5 MB of
    numbers that the browser parsed, coloured and painted twice per redraw, about half the time of an
    Attention-view click. Hover gives the query and key of a cell; :func:`matrix_csv` has every weight."""
    values = [_matrix_values(m, log) for _, m, _ in panels]
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values])
    zmin, zmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    colormap = get_cmap("viridis").with_extremes(bad="white")
    count = len(panels)
    spacing, bar = 0.06, 0.06
    labels = [(key_labels(token_layout), query_labels(token_layout)) for _, _, token_layout in panels]
    room = 1 - bar - spacing * (count - 1)
    data: list[dict[str, object]] = []
    layout: dict[str, object] = {}
    annotations = []
    left = 0.0
    for i, ((name, _, token_layout), z) in enumerate(zip(panels, values, strict=True)):
        axis = "" if i == 0 else str(i + 1)
        keys, queries = labels[i]
        width = room * len(keys) / sum(len(k) for k, _ in labels)
        rgb = colormap(np.clip((z - zmin) / ((zmax - zmin) or 1.0), 0.0, 1.0))[..., :3]
        data.append(dict(type="image", source=png_data_uri((rgb * 255).round().astype(np.uint8)), x0=0, dx=1, y0=0,
                         dy=1, xaxis=f"x{axis}", yaxis=f"y{axis}",
                         hovertemplate=f"{name}<br>query row %{{y}}, key column %{{x}}<extra></extra>"))
        prefix, prompts, patches = token_layout.num_prefix, token_layout.num_prompt_keys, token_layout.num_patches
        candidates = [*range(prefix + prompts), *([prefix + prompts + patches // 2] if patches else [])]
        ticks = spaced_ticks(candidates, int(np.ceil(TICK_SPACING_PX * len(keys) / (PANEL_WIDTH_PX * width))))
        layout[f"xaxis{axis}"] = dict(domain=[left, left + width], range=[-0.5, len(keys) - 0.5], anchor=f"y{axis}",
                                      tickvals=ticks, ticktext=[keys[j] if j < prefix + prompts else "patches"
                                                                for j in ticks],
                                      tickangle=-90, tickfont=dict(size=8), title=dict(text=f"key ({len(keys)})"),
                                      showgrid=False, zeroline=False, constrain="domain")
        rows = [*range(prefix), *([prefix + patches // 2] if patches else [])]
        layout[f"yaxis{axis}"] = dict(range=[len(queries) - 0.5, -0.5], anchor=f"x{axis}", tickvals=rows,
                                      ticktext=[*queries[:prefix], *(["patches"] if patches else [])],
                                      title=dict(text=f"query ({len(queries)})" if i == 0 else ""), showgrid=False,
                                      zeroline=False, constrain="domain")
        annotations.append(dict(text=name, x=left + width / 2, y=1.0, xref="paper", yref="paper", xanchor="center",
                                yanchor="bottom", showarrow=False, font=dict(size=14)))
        left += width + spacing
    trace, layout[f"xaxis{count + 1}"], layout[f"yaxis{count + 1}"] = colour_bar(
        "viridis", zmin, zmax, "log10 weight" if log else "weight", str(count + 1), 1 - bar + 0.01)
    data.append(trace)
    layout.update(title=dict(text=title), height=480, margin=dict(l=10, r=10, t=60, b=10), annotations=annotations)
    return go.Figure(data=data, layout=layout)


def spaced_ticks(candidates: list[int], gap: int) -> list[int]:
    """The ``candidates`` (increasing column indices) kept left to right so that two kept ones are at least
    ``gap`` columns apart: the labels that fit side by side."""
    kept: list[int] = []
    for column in candidates:
        if not kept or column - kept[-1] >= gap:
            kept.append(column)
    return kept


def matrix_csv(panels: list[tuple[str, np.ndarray, TokenLayout]]) -> bytes:
    """Every weight of the matrices of :func:`matrix_figure` (rows and columns as numbered on its axes):
    ``model,query_row,query,key_column,key,weight``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "query_row", "query", "key_column", "key", "weight"])
    for name, matrix, layout in panels:
        keys, queries = key_labels(layout), query_labels(layout)
        writer.writerows([name, q, queries[q], k, keys[k], repr(float(matrix[q, k]))]
                         for q in range(len(queries)) for k in range(len(keys)))
    return buffer.getvalue().encode()


def matrix_matplotlib(panels: list[tuple[str, np.ndarray, TokenLayout]], title: str, log: bool) -> Figure:
    """Static version of :func:`matrix_figure`."""
    values = [_matrix_values(m, log) for _, m, _ in panels]
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values])
    zmin, zmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig = Figure(figsize=(6.5 * len(panels), 5.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    shown = None
    for ax, (name, _, layout), z in zip(axes, panels, values, strict=True):
        shown = ax.imshow(z, cmap="viridis", vmin=zmin, vmax=zmax, aspect="auto", interpolation="nearest")
        keys = key_labels(layout)
        prefix, prompts = layout.num_prefix, layout.num_prompt_keys
        ax.set_xticks([*range(prefix + prompts), prefix + prompts + layout.num_patches // 2],
                      [*keys[:prefix + prompts], "patches"], rotation=90, fontsize=5)
        ax.set_title(name, fontsize="medium")
        ax.set_ylabel("query")
    if shown is not None:
        fig.colorbar(shown, ax=axes, label="log10 weight" if log else "weight", shrink=0.8)
    fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------------ t-SNE
def tsne_figure(embedding: np.ndarray, labels: np.ndarray, predictions: np.ndarray, indices: np.ndarray,
                class_names: list[str], current: int | None, title: str) -> go.Figure:
    """t-SNE scatter coloured by class (:func:`tsne_class_colours`; the legend is :func:`tsne_legend_html`),
    misclassified points drawn as crosses, the current image as a large ring. Every point carries
    ``(test-set index, predicted class, true class)`` as custom data (a click loads that image).

    All points are one trace: a trace per class costs the browser about as much again to draw as the points."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    colours = tsne_class_colours(labels)
    wrong = predictions != labels

    def name(cls: int) -> str:
        return class_names[cls] if cls < len(class_names) else str(cls)

    custom = [[int(i), name(int(p)), name(int(t))] for i, p, t in zip(indices, predictions, labels, strict=True)]
    data: list[dict[str, object]] = [dict(
        type="scatter", x=embedding[:, 0], y=embedding[:, 1], mode="markers", showlegend=False, customdata=custom,
        marker=dict(size=np.where(wrong, 9, 6), color=[colours[int(c)] for c in labels],
                    symbol=np.where(wrong, "x", "circle"), line=dict(width=0)),
        hovertemplate="test image %{customdata[0]}<br>class %{customdata[2]}, predicted %{customdata[1]}"
                      "<extra></extra>",
    )]
    if current is not None and current in set(indices.tolist()):
        at = int(np.flatnonzero(indices == current)[0])
        data.append(dict(type="scatter", x=[embedding[at, 0]], y=[embedding[at, 1]], mode="markers",
                         showlegend=False, hoverinfo="skip",
                         marker=dict(size=18, symbol="circle-open", color="black", line=dict(width=3))))
    layout = dict(title=dict(text=title), height=500, margin=dict(l=10, r=10, t=60, b=10),
                  xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False), clickmode="event+select",
                  dragmode=False)
    return go.Figure(data=data, layout=layout)


def tsne_class_colours(labels: np.ndarray) -> list[str]:
    """One colour per class index up to the largest label (the same in every t-SNE chart and its legend)."""
    return categorical_colors(int(np.max(labels)) + 1 if len(labels) else 1)


def tsne_legend_html(labels: np.ndarray, class_names: list[str]) -> str:
    """The legend of :func:`tsne_figure` (shared by the charts of every model) as one line of HTML."""
    colours = tsne_class_colours(labels)
    classes = sorted({int(c) for c in labels})
    items = [f"<span style='white-space:nowrap'><span style='color:{colours[c]}'>&#9679;</span> class "
             f"{class_names[c] if c < len(class_names) else c}</span>" for c in classes]
    items += ["<span style='white-space:nowrap'>&#10005; misclassified</span>",
              "<span style='white-space:nowrap'>&#9711; current image</span>"]
    return f"<div style='display:flex;flex-wrap:wrap;gap:4px 14px;font-size:0.85em'>{''.join(items)}</div>"


# ------------------------------------------------------------------------------------------ models
MODEL_COLOURS = {"Baseline": "#ff7f0e", "TCPA": "#1f77b4"}
"""One colour per compared model, the same in every chart of the Models view."""
DIFFERING_COLOUR = "#d62728"


def training_curves_figure(runs: list[tuple[str, str, list[dict]]], title: str) -> go.Figure:
    """Per run (``(role, name, history)``, ``history`` = the run's per-epoch records): the train loss (left
    panel) and the validation accuracy (right panel) per epoch, one colour per model; the best epoch by
    validation accuracy is a star, epochs trained with random prompt selection are open markers."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["train loss (mean over the epoch's training images)",
                                                        "validation accuracy (after the epoch)"],
                        horizontal_spacing=0.1)
    for role, name, history in runs:
        colour = MODEL_COLOURS.get(role, "#2ca02c")
        epochs = [int(h["epoch"]) for h in history]
        random = ["circle-open" if h.get("random_selection") else "circle" for h in history]
        for col, field in ((1, "train_loss"), (2, "val_acc")):
            values = [h.get(field) for h in history]
            fig.add_trace(go.Scatter(x=epochs, y=values, mode="lines+markers", name=f"{role}: {name}",
                                     legendgroup=role, showlegend=col == 1, line=dict(color=colour),
                                     marker=dict(symbol=random, size=8, color=colour),
                                     hovertemplate=f"{role}<br>epoch %{{x}}: %{{y:.4f}}<extra>{field}</extra>"),
                          row=1, col=col)
        scored = [(h["val_acc"], int(h["epoch"])) for h in history if isinstance(h.get("val_acc"), int | float)]
        if scored:
            best_acc, best_epoch = max(scored)
            fig.add_trace(go.Scatter(x=[best_epoch], y=[best_acc], mode="markers", legendgroup=role,
                                     showlegend=False, marker=dict(symbol="star", size=15, color=colour,
                                                                   line=dict(color="black", width=1)),
                                     hovertemplate=f"{role}: best epoch %{{x}}, %{{y:.4f}}<extra></extra>"),
                          row=1, col=2)
    fig.update_xaxes(title="epoch", dtick=1)
    fig.update_yaxes(title="loss", row=1, col=1)
    fig.update_yaxes(title="accuracy", tickformat=".0%", row=1, col=2)
    fig.update_layout(title=dict(text=title), height=380, margin=dict(l=10, r=10, t=80, b=10),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def class_accuracy_figure(rows: list[tuple[str, np.ndarray, np.ndarray]], class_names: list[str],
                          title: str) -> go.Figure:
    """Grouped bars: per class, the accuracy of each model (``(role, accuracy [C], images [C])``)."""
    fig = go.Figure()
    for role, accuracy, images in rows:
        correct = np.rint(np.nan_to_num(accuracy) * images).astype(int)
        fig.add_trace(go.Bar(x=class_names, y=accuracy.tolist(), name=role, marker_color=MODEL_COLOURS.get(role),
                             customdata=np.stack([correct, images], axis=-1).tolist(),
                             hovertemplate=f"{role}<br>class %{{x}}: %{{y:.1%}} (%{{customdata[0]}} of "
                                           "%{customdata[1]})<extra></extra>"))
    fig.update_layout(title=dict(text=title), barmode="group", height=360, margin=dict(l=10, r=10, t=60, b=10),
                      yaxis=dict(title="accuracy", tickformat=".0%", range=[0, 1.05]),
                      xaxis=dict(title="true class", type="category", tickmode="array", tickvals=class_names),
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    return fig


def confusion_figure(panels: list[tuple[str, np.ndarray]], class_names: list[str], differing: np.ndarray,
                     title: str) -> go.Figure:
    """One confusion-matrix heatmap per model (``(name, [C, C])``: row = true class, column = predicted),
    counts written in the cells (up to 20 classes); the rows in ``differing`` are outlined in every panel."""
    from plotly.subplots import make_subplots

    count = len(class_names)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[name for name, _ in panels],
                        horizontal_spacing=0.08)
    zmax = max(int(m.max()) for _, m in panels) or 1
    for i, (name, matrix) in enumerate(panels, start=1):
        fig.add_trace(go.Heatmap(z=matrix.tolist(), x=class_names, y=class_names, zmin=0, zmax=zmax,
                                 colorscale="Blues", showscale=i == len(panels),
                                 colorbar=dict(title="images", thickness=12),
                                 text=matrix.tolist() if count <= 20 else None,
                                 texttemplate="%{text}" if count <= 20 else None,
                                 hovertemplate=f"{name}<br>true %{{y}}, predicted %{{x}}: %{{z}}<extra></extra>"),
                      row=1, col=i)
        for row in differing.tolist():
            fig.add_shape(type="rect", x0=-0.45, x1=count - 0.55, y0=row - 0.42, y1=row + 0.42,
                          line=dict(color=DIFFERING_COLOUR, width=2.5), row=1, col=i)
        fig.update_xaxes(title="predicted class", type="category", tickmode="array", tickvals=class_names,
                         row=1, col=i)
        fig.update_yaxes(title="true class" if i == 1 else None, type="category", tickmode="array",
                         tickvals=class_names, autorange="reversed", scaleanchor=f"x{'' if i == 1 else i}",
                         row=1, col=i)
    fig.update_layout(title=dict(text=title), height=460, margin=dict(l=10, r=10, t=80, b=10))
    return fig
