"""Per-token prompt selection (the main page).

The image with its patch grid (click a patch, or use the patch buttons / row and column inputs), the
image prompts the selected patch chose at every layer and its attention at the chosen layer, the CLS
token's CLS prompts per layer, the image coloured by selected prompt, and pool usage over a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pandas as pd
import streamlit as st

from app import state
from app.export import ExportFigure, export_bar
from app.figures import (
    image_grid_figure,
    image_grid_matplotlib,
    selection_map_figure,
    selection_map_matplotlib,
    selection_table_figure,
    selection_table_matplotlib,
)
from app.loading import assignments_csv, batch_selection
from app.views.registry import ImageContext, register_view
from app.widgets import CHART_CONFIG, patch_picker
from tcpa_viz import (
    plot_pool_usage_matplotlib,
    plot_pool_usage_plotly,
    plot_token_attention_matplotlib,
    plot_token_attention_plotly,
    pool_sizes,
    token_attention,
)

BATCH_KEY = "sel_batch"
DEFAULT_BATCH = 32


@register_view("selection", "Prompt selection", order=10)
def render(ctx: ImageContext) -> None:
    """Draw the prompt-selection page."""
    lm, cap, image = ctx.model, ctx.tcpa_capture, ctx.image
    layout = cap.layout
    h, w = layout.grid_size
    row, col = state.patch()
    layer = state.layer()
    figures: list[ExportFigure] = []

    st.subheader("Per-token prompt selection")
    left, right = st.columns([1.15, 1])
    with left:
        title = f"{image.name}: click a patch"
        grid_fig = image_grid_figure(image.display, (h, w), (row, col), title)
        st.plotly_chart(grid_fig, key=state.GRID_CHART, on_select=partial(state.on_grid_click, w),
                        selection_mode="points", config=CHART_CONFIG)
        figures.append(ExportFigure("image and patch grid", grid_fig,
                                    lambda: image_grid_matplotlib(image.display, (h, w), (row, col), image.name)))
    with right:
        patch_picker((h, w), cap.depth)

    if not lm.has_selection or cap.image_assign is None:
        st.info(f"The model {lm.info.label} uses method {lm.method!r}, which has no per-token prompt matching; "
                "choose a TCPA checkpoint in the sidebar to see prompt selections. Its attention is shown in the "
                "Attention view.")
        export_bar(figures, key="sel_export", stem=ctx.stem)
        return

    cls_pool, image_pool = pool_sizes(layout)
    patch_index = row * w + col
    chosen = cap.image_assign[layer, patch_index]
    query = layout.patch_query_index(row, col)
    st.markdown(f"#### Selected patch ({row}, {col}) at layer {layer}")
    st.markdown(
        f"Query row {query}. Image prompts selected by patch ({row}, {col}) at layer {layer} "
        f"(most similar key first): **{', '.join(str(int(e)) for e in chosen)}**"
    )

    table, cls_table = st.columns(2)
    with table:
        assign = cap.image_assign[:, patch_index]
        name = f"image prompts chosen by patch ({row}, {col})"
        fig = selection_table_figure(assign, image_pool, f"{name}, per layer", highlight=layer)
        st.plotly_chart(fig, key="sel_patch_table", config=CHART_CONFIG)
        figures.append(ExportFigure("image prompts of the selected patch", fig,
                                    lambda: selection_table_matplotlib(assign, image_pool, name)))
    with cls_table:
        if cap.cls_assign is not None:
            cls_assign = cap.cls_assign
            cls_name = "CLS prompts chosen by the CLS token"
            fig = selection_table_figure(cls_assign, cls_pool, f"{cls_name}, per layer", highlight=layer, pool="CLS")
            st.plotly_chart(fig, key="sel_cls_table", config=CHART_CONFIG)
            st.caption(f"Layer {layer}: CLS prompts {', '.join(str(int(e)) for e in cls_assign[layer])}")
            figures.append(ExportFigure(cls_name, fig,
                                        lambda: selection_table_matplotlib(cls_assign, cls_pool, cls_name, "CLS")))
        else:
            st.info("This model has no CLS token, so there is no CLS-pool selection.")

    ta = token_attention(cap.batch_attention(layer), layout, (row, col), heads="mean")
    att_title = f"attention of patch ({row}, {col}) at layer {layer} (mean over heads, after the TCPA mask)"
    fig = plot_token_attention_plotly(image.display, ta, title=att_title)
    fig.update_layout(width=None, height=430, margin=dict(l=10, r=10, t=80, b=10))
    st.plotly_chart(fig, key="sel_attention", config=CHART_CONFIG)
    totals = {k: float(v[0]) for k, v in ta.group_totals().items()}
    st.caption(f"Attention mass of patch ({row}, {col}): selected image prompts {totals['image_prompts']:.3f}, "
               f"patches {totals['patches']:.3f}, prefix {totals['prefix']:.3f}; row sum {float(ta.row_sum[0]):.3f} "
               "(< 1: the mask removes the unselected prompts' share without renormalising).")
    figures.append(ExportFigure("attention of the selected patch", fig,
                                lambda: plot_token_attention_matplotlib(image.display, ta, title=att_title)))

    map_col, usage_col = st.columns(2)
    with map_col:
        controls = st.columns(2)
        mode = controls[0].radio("Colour patches by", ["top1", "set"], horizontal=True, key="sel_map_mode",
                                 persist_state="page",
                                 format_func=lambda m: "selected prompt" if m == "top1" else "selected set")
        top_k = int(cap.image_assign.shape[-1])
        rank_key = state.default("sel_map_rank", 0, 0, top_k - 1)
        rank = controls[1].number_input("Rank in the top-k list", min_value=0, max_value=top_k - 1, step=1,
                                        key=rank_key, persist_state="page", disabled=mode != "top1")
        map_assign = cap.image_assign[layer]
        what = f"prompt at rank {int(rank)} per patch" if mode == "top1" else "patches sharing a selected set"
        map_title = f"layer {layer}: {what}"
        fig = selection_map_figure(map_assign, layout, image.display, mode, int(rank), map_title)
        st.plotly_chart(fig, key="sel_map", config=CHART_CONFIG)
        figures.append(ExportFigure("image coloured by selected prompt", fig, lambda: selection_map_matplotlib(
            map_assign, layout, image.display, mode, int(rank), map_title)))
    with usage_col:
        pool_usage_panel(ctx, figures)

    export_bar(figures, key="sel_export", stem=ctx.stem, csv={
        "CSV (this image)": ("assignments", lambda: assignments_csv(
            layout, {l: cap.cls_assign[l][None] for l in range(cap.depth)} if cap.cls_assign is not None else None,
            {l: cap.image_assign[l][None] for l in range(cap.depth)}, [image.name])),
        **batch_csv(ctx),
    })


def pool_usage_panel(ctx: ImageContext, figures: list[ExportFigure]) -> None:
    """Pool usage of the TCPA model over the first N test images, with entropy and diversity numbers."""
    if ctx.dataset is None:
        st.info("Pool usage needs the test set, which could not be opened.")
        return
    lm = ctx.model
    total = len(ctx.dataset)
    count = st.number_input("Images for pool usage", min_value=1, max_value=total, step=8,
                            key=state.default(BATCH_KEY, min(DEFAULT_BATCH, total), 1, total), persist_state="page")
    with st.spinner("Running the batch..."):
        batch = batch_selection(lm.key, ctx.data_key, int(count), lm, ctx.dataset)
    stats = batch.stats
    pool = st.radio("Pool", ["image", "cls"], horizontal=True, key="sel_pool", persist_state="page",
                    format_func=lambda p: "image pool" if p == "image" else "CLS pool")
    if pool == "cls" and not batch.cls_assign:
        st.info("This model has no CLS token, so there is no CLS-pool usage.")
        return
    title = f"{'image' if pool == 'image' else 'CLS'} pool usage over {batch.count} test images"
    fig = plot_pool_usage_plotly(stats, pool=pool, title=title)
    fig.update_layout(width=None, height=360, margin=dict(l=10, r=10, t=50, b=10))
    st.plotly_chart(fig, key="sel_usage", config=CHART_CONFIG)
    figures.append(ExportFigure(f"{pool} pool usage", fig,
                                lambda: plot_pool_usage_matplotlib(stats, pool=pool, style="heatmap", title=title)))
    columns = [c for c in (f"{pool}_entropy", f"{pool}_entries_used", f"{pool}_jaccard", f"{pool}_distinct_sets")
               if any(c in s for s in stats)]
    frame = pd.DataFrame([{c: s.get(c) for c in ["layer", *columns]} for s in stats]).set_index("layer")
    st.dataframe(frame.round(3), width="stretch")


def batch_csv(ctx: ImageContext) -> dict[str, tuple[str, Callable[[], bytes]]]:
    """The CSV export of the batch assignments (when a batch was computed in this run)."""
    if ctx.dataset is None or not ctx.model.has_selection:
        return {}
    count = int(st.session_state.get(BATCH_KEY, min(DEFAULT_BATCH, len(ctx.dataset))))
    lm, dataset, data_key = ctx.model, ctx.dataset, ctx.data_key

    def build() -> bytes:
        batch = batch_selection(lm.key, data_key, count, lm, dataset)
        return assignments_csv(batch.layout, batch.cls_assign or None, batch.image_assign,
                               [f"test{i}" for i in range(batch.count)])

    return {"CSV (batch)": (f"assignments_first_{count}_test_images", build)}

