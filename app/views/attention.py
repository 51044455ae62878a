"""Attention page: one query's attention to the patches of both models over the image, on one shared colour
scale, with their difference; a click on any panel picks the patch (this view's own patch picker). Below, one
panel at a time when asked for: the whole attention matrices (prompt columns labelled by pool entry, optional
log scale), the TCPA mask, or 3D surfaces of selected rows. The page body is an ``st.fragment``: the overlays
are a patch-panel component (:mod:`app.patch_panels`), so a click draws at most one plotly chart, the lower
panel's."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app import state
from app.export import ExportFigure, export_bar, slug
from app.figures import (
    mask_figure,
    mask_matplotlib,
    matrix_csv,
    matrix_figure,
    matrix_matplotlib,
    overlay_compare_figure,
    overlay_compare_matplotlib,
    overlay_compare_panels,
)
from app.loading.explain import DELETION_STEPS, ImageExplanation, explain_image
from app.patch_panels import patch_panels
from app.views.registry import ImageContext, register_view
from app.widgets import CHART_CONFIG, head_options, head_text, layer_slider, parse_heads, patch_inputs
from tcpa_core import TCPAError, TokenLayout
from tcpa_viz import (
    default_surface_queries,
    list_explainers,
    plot_attention_surface_matplotlib,
    plot_attention_surface_plotly,
    token_attention,
)

OVERLAY_CHART = "att_overlay"
PANELS = {"none": "nothing", "matrix": "attention matrices", "mask": "TCPA mask", "surface": "3D rows"}
"""The lower panel's choices; none is drawn until asked for, so a layer or head change redraws one chart."""


@register_view("attention", "Attention", order=20)
def render(ctx: ImageContext) -> None:
    """Draw the attention page."""
    st.subheader("Attention")
    body(ctx)


def _reduce(attn: np.ndarray, heads: str | int) -> np.ndarray:
    """``[H, Q, K]`` -> ``[Q, K]`` by the head choice."""
    if heads == "mean":
        return attn.mean(0)
    if heads == "max":
        return attn.max(0)
    return attn[int(heads)]


@st.fragment
def body(ctx: ImageContext) -> None:
    """Controls and charts (rerun alone when a control or the patch changes)."""
    models = ctx.models()
    depth = ctx.tcpa_capture.depth
    num_heads = min(lm.num_heads for _, lm, _ in models)
    options = head_options(num_heads)
    state.show_notes()
    row, col = state.patch()
    h, w = ctx.tcpa_capture.layout.grid_size
    top = st.columns([2, 1, 1.2, 1.4])
    with top[0]:
        layer_slider(depth)
    heads_choice = top[1].selectbox("Heads", options, format_func=head_text, **state.bound(state.HEADS))
    query_choice = top[2].radio("Query token", ["patch", "cls"], horizontal=True, key="att_query", persist_state="page",
                                format_func=lambda q: "selected patch" if q == "patch" else "CLS")
    with top[3]:
        raw = st.toggle("Before the mask", key="att_raw", persist_state="page",
                        help="TCPA: the attention softmax before the mask removes the unselected prompts")
        smooth = st.toggle("Smooth overlay", key="att_smooth", persist_state="page",
                           help="Off: every patch drawn as the block it is (the values as computed); on: "
                                "interpolated for display")
    layer = state.layer()
    heads = parse_heads(heads_choice)
    query = (row, col) if query_choice == "patch" else "cls"
    if query == "cls" and not ctx.tcpa_capture.layout.has_cls_token:
        st.info("This model has no CLS token; showing the selected patch instead.")
        query = (row, col)
    image = ctx.image
    tag = f"layer {layer}, {head_text(heads_choice)}{', before the mask' if raw else ''}"
    stem = f"{ctx.stem}_patch{row}-{col}_layer{layer}_{'head' + str(heads) if isinstance(heads, int) else heads}"
    figures: list[ExportFigure] = []
    tables: dict[str, tuple[str, Callable[[], bytes]]] = {}
    grids, lines = [], []
    for role, lm, cap in models:
        ta = token_attention(cap.batch_attention(layer, raw=raw), cap.layout, query, heads=heads)
        grids.append((f"{role} ({lm.label})", ta.grid[0].numpy()))
        totals = {k: float(v[0]) for k, v in ta.group_totals().items()}
        prompts = sum(totals[g] for g in ("cls_prompts", "image_prompts", "prompts"))
        lines.append(f"**{role}** {ta.query_label}: patches {totals['patches']:.3f}, prompts {prompts:.3f}, "
                     f"prefix {totals['prefix']:.3f}, row sum {float(ta.row_sum[0]):.3f}")
    box = query if isinstance(query, tuple) else None
    query_name = f"patch ({row}, {col})" if box else "CLS"
    title = f"attention of {query_name} to the patches ({tag}); click a patch to choose it"
    st.markdown(f"**Attention of {query_name} at layer {layer}, {head_text(heads_choice)}**"
                + (" (before the mask)" if raw else ""))
    panels, bars = overlay_compare_panels(image.display, grids, smooth)
    patch_panels(OVERLAY_CHART, panels, (h, w), box, bars=bars,
                 hint="Hover a patch for its value; click it to choose it.")
    st.caption("  \n".join(lines) + "  \nOne colour scale for both models (0 to the larger maximum); the "
               "difference panel is TCPA minus baseline. Row sums below 1: TCPA's mask removes the unselected "
               "prompts' share without renormalising.")
    figures.append(ExportFigure("overlays and difference",
                                lambda: overlay_compare_figure(panels, bars, (h, w), box, title),
                                lambda: overlay_compare_matplotlib(image.display, grids, box, smooth, title)))
    patch_inputs((h, w))

    controls = st.columns([3, 1])
    panel = controls[0].segmented_control("Lower panel", list(PANELS), format_func=PANELS.get, key="att_panel",
                                          default="none")
    log = controls[1].toggle("Log scale", key="att_log", persist_state="page", help="log10 of the matrix weights")
    if panel == "matrix":
        def matrices() -> list[tuple[str, np.ndarray, TokenLayout]]:
            return [(f"{role} ({lm.label})", _reduce(cap.batch_attention(layer, raw=raw)[0].numpy(), heads),
                     cap.layout) for role, lm, cap in models]

        mx_title = f"attention matrices ({tag})"
        fig = state.remembered("att_matrix", (tuple(lm.key for _, lm, _ in models), image.key, mx_title, log),
                               lambda: matrix_figure(matrices(), mx_title, log))
        st.plotly_chart(fig, key="att_matrix", config=CHART_CONFIG)
        st.caption("Hover names a cell's query row and key column (numbered as on the axes); the CSV export has "
                   "every weight with its token labels.")
        figures.append(ExportFigure("attention matrices", fig, lambda: matrix_matplotlib(matrices(), mx_title, log)))
        tables["CSV: matrices"] = ("attention_matrices", lambda: matrix_csv(matrices()))
    elif panel == "mask":
        cap = ctx.tcpa_capture
        mask = cap.mask[layer].numpy()
        if mask.all():
            st.caption(f"No mask: every query of {ctx.model.label!r} sees every key.")
        else:
            mk_title = f"TCPA mask, layer {layer} (dark = the query may attend to the key)"
            fig = mask_figure(mask, cap.layout, mk_title)
            st.plotly_chart(fig, key="att_mask", config=CHART_CONFIG)
            figures.append(ExportFigure("TCPA mask", fig, lambda: mask_matplotlib(mask, cap.layout, mk_title)))
    elif panel == "surface":
        columns = st.columns(len(models))
        for column, (role, _, cap) in zip(columns, models, strict=True):
            layout = cap.layout
            attn = cap.batch_attention(layer, raw=raw)
            rows = sorted({*default_surface_queries(layout), layout.patch_query_index(row, col)})
            sf_title = f"{role}: attention rows in 3D ({tag})"
            fig = plot_attention_surface_plotly(attn, layout, queries=rows, heads=heads, title=sf_title)
            fig.update_layout(width=None, height=480)
            column.plotly_chart(fig, key=f"att_surface_{role}", config=CHART_CONFIG)
            figures.append(ExportFigure(f"{role} 3D surface", fig,
                                        lambda attn=attn, layout=layout, rows=rows, sf_title=sf_title:
                                        plot_attention_surface_matplotlib(attn, layout, queries=rows,
                                                                          heads=heads, title=sf_title)))
    explanation_panel(ctx)
    export_bar(figures, key="att_export", stem=stem, csv=tables)


def explanation_figure(display: np.ndarray, rows: list[tuple[str, ImageExplanation]], title: str) -> go.Figure:
    """Per model: the image, the patch relevance of the explanation over it, and its deletion curve beside
    the random-order one."""
    from plotly.subplots import make_subplots

    names = []
    for role, ex in rows:
        names += [f"{role}: {ex.method} map (class {ex.target})",
                  f"{role}: deletion AUC {ex.deletion_auc:.3f} (random {ex.deletion_random_auc:.3f})"]
    fig = make_subplots(rows=len(rows), cols=2, subplot_titles=names, horizontal_spacing=0.12)
    height, width = display.shape[:2]
    for i, (_, ex) in enumerate(rows, start=1):
        h, w = ex.patches.shape
        fig.add_trace(go.Image(z=display, hoverinfo="skip"), row=i, col=1)
        fig.add_trace(go.Heatmap(z=ex.patches.tolist(), x0=width / w / 2, dx=width / w, y0=height / h / 2,
                                 dy=height / h, opacity=0.55, colorscale="Inferno", showscale=False,
                                 hovertemplate="relevance %{z:.3g}<extra></extra>"), row=i, col=1)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{2 * i - 1}", showticklabels=False, row=i, col=1)
        fig.update_xaxes(showticklabels=False, row=i, col=1)
        for curve, name, dash, colour in ((ex.deletion, "relevance order", None, "#1f77b4"),
                                          (ex.deletion_random, "random order", "dot", "#7f7f7f")):
            fig.add_trace(go.Scatter(x=ex.fractions.tolist(), y=curve.tolist(), mode="lines+markers", name=name,
                                     line=dict(dash=dash, color=colour), marker=dict(color=colour),
                                     showlegend=i == 1), row=i, col=2)
        fig.update_xaxes(title="share of patches deleted", row=i, col=2)
        fig.update_yaxes(title="target probability", rangemode="tozero", row=i, col=2)
    fig.update_layout(height=340 * len(rows), margin=dict(l=10, r=10, t=60, b=10), title=title)
    return fig


def explanation_matplotlib(display: np.ndarray, rows: list[tuple[str, ImageExplanation]], title: str):
    """Static version of :func:`explanation_figure` (PNG export)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    height, width = display.shape[:2]
    for (role, ex), (left, right) in zip(rows, axes, strict=True):
        left.imshow(display)
        left.imshow(ex.patches, cmap="inferno", alpha=0.55, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                    interpolation="nearest")
        left.set_title(f"{role}: {ex.method} map (class {ex.target})", fontsize="medium")
        left.set_axis_off()
        right.plot(ex.fractions, ex.deletion, marker="o", color="#1f77b4", label="relevance order")
        right.plot(ex.fractions, ex.deletion_random, marker="o", linestyle=":", color="#7f7f7f", label="random order")
        right.set_title(f"{role}: deletion AUC {ex.deletion_auc:.3f} (random {ex.deletion_random_auc:.3f})",
                        fontsize="medium")
        right.set_xlabel("share of patches deleted")
        right.set_ylabel("target probability")
        right.set_ylim(bottom=0)
        right.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return fig


def explanation_map_csv(rows: list[tuple[str, ImageExplanation]]) -> bytes:
    """CSV of every model's patch relevance: ``model,method,target,row,col,relevance``."""
    lines = ["model,method,target,row,col,relevance"]
    for role, ex in rows:
        h, w = ex.patches.shape
        lines += [f"{role},{ex.method},{ex.target},{r},{c},{float(ex.patches[r, c])!r}" for r in range(h)
                  for c in range(w)]
    return ("\n".join(lines) + "\n").encode()


def deletion_curve_csv(rows: list[tuple[str, ImageExplanation]]) -> bytes:
    """CSV of every model's deletion curve beside the random order:
    ``model,method,target,fraction_deleted,probability_relevance_order,probability_random_order``."""
    lines = ["model,method,target,fraction_deleted,probability_relevance_order,probability_random_order"]
    for role, ex in rows:
        lines += [f"{role},{ex.method},{ex.target},{float(f)!r},{float(d)!r},{float(r)!r}"
                  for f, d, r in zip(ex.fractions, ex.deletion, ex.deletion_random, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def explanation_panel(ctx: ImageContext) -> None:
    """Behind a toggle (off by default, so the page stays fast): an explanation method and target class, the
    map of every model and its deletion curve (:func:`tcpa_viz.faithfulness`, blur fill)."""
    if not st.toggle("Explanation and deletion curve", key="att_explain", persist_state="page",
                     help="Class-specific attribution (tcpa_viz.explain) with its deletion curve"):
        return
    methods = list_explainers()
    names = ctx.model.class_names
    controls = st.columns(2)
    method = controls[0].selectbox("Explanation method", methods, key="att_explain_method", persist_state="page")
    target_choice = controls[1].selectbox("Target class", ["predicted", *range(len(names))], key="att_explain_target",
                                          persist_state="page",
                                          format_func=lambda t: "predicted class" if t == "predicted" else names[t])
    target = None if target_choice == "predicted" else int(target_choice)
    rows = []
    with st.spinner(f"Explaining with {method}..."):
        for role, lm, _ in ctx.models():
            try:
                rows.append((role, explain_image(lm.key, ctx.image.key, method, target, lm, ctx.image)))
            except TCPAError as exc:
                st.error(f"{role}: {method} cannot explain {ctx.image.name}: {exc}")
    if not rows:
        return
    title = f"{method} explanation of {ctx.image.name} and its deletion curve"
    fig = explanation_figure(ctx.image.display, rows, title)
    st.plotly_chart(fig, key="att_explain_chart", config=CHART_CONFIG)
    lines = []
    for role, ex in rows:
        prompts = "" if ex.prompt_share is None else f", {100 * ex.prompt_share:.1f} % of |relevance| on prompt keys"
        lines.append(f"**{role}**: class {names[ex.target] if ex.target < len(names) else ex.target}, deletion AUC "
                     f"{ex.deletion_auc:.3f} vs random order {ex.deletion_random_auc:.3f}{prompts}")
    st.caption("  \n".join(lines) + f"  \nDeletion: patches are blurred in decreasing relevance, "
               f"{DELETION_STEPS} steps; lower AUC = more faithful.")
    display = ctx.image.display
    targets = "-".join(str(t) for t in sorted({ex.target for _, ex in rows}))
    export_bar([ExportFigure("explanation and deletion curve", fig,
                             lambda: explanation_matplotlib(display, rows, title))],
               key="att_explain_export", stem=f"{ctx.stem}_{slug(method)}_class{targets}",
               heading="Export the explanation",
               csv={"CSV: map": ("relevance_map", lambda: explanation_map_csv(rows)),
                    "CSV: curve": ("deletion_curve", lambda: deletion_curve_csv(rows))})
