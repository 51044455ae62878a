"""Per-token prompt selection (the main page).

The image with its patch grid (click a patch, or use the row and column inputs), the image prompts the
selected patch chose at the chosen layer with their attention share next to the baseline's attention to each of
its prompts, and one lower panel at a time (the patch's choices per layer, the CLS token's, the image coloured
by selected prompt, pool usage over a batch). Everything that depends on the patch or the layer is one
``st.fragment``: changing them reruns only this page body. A patch click draws no plotly chart: the clickable
image is a patch-panel component (:mod:`app.patch_panels`), the prompt shares and the rank tables are HTML, which
the browser lays out in a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import streamlit as st

from app import state
from app.export import ExportFigure, export_bar
from app.figures import (
    SELECTED_COLOUR,
    PatchPanel,
    image_grid_figure,
    image_grid_matplotlib,
    key_labels,
    prompt_share_figure,
    prompt_share_html,
    selection_map_figure,
    selection_map_matplotlib,
    selection_table_figure,
    selection_table_html,
    selection_table_matplotlib,
)
from app.loading import ImageCapture, assignments_csv, batch_selection
from app.patch_panels import patch_panels
from app.views.atlas import open_entry
from app.views.registry import ImageContext, register_view
from app.widgets import CHART_CONFIG, layer_slider, patch_inputs
from tcpa_viz import as_rgb_uint8, plot_pool_usage_matplotlib, plot_pool_usage_plotly, pool_sizes, token_attention

BATCH_KEY = "sel_batch"
DEFAULT_BATCH = 32
PANELS = {
    "patch": "image prompts of the patch, per layer",
    "cls": "CLS prompts of the CLS token, per layer",
    "map": "image coloured by selected prompt",
    "usage": "pool usage over test images",
}
STATS = {
    "entropy": ("entropy (bits)", "entropy of how often each pool entry is selected over all (image, token) "
                "pairs; log2(pool size) when every entry is used equally"),
    "entries_used": ("entries used", "pool entries selected at least once"),
    "jaccard": ("mean Jaccard", "mean overlap |A∩B|/|A∪B| of the selected sets of two different images "
                "(1 = every image selects the same set)"),
    "distinct_sets": ("distinct sets", "number of different selected sets over the images (CLS token) or "
                      "(image, patch) pairs"),
}


def prompt_shares(cap: ImageCapture, layer: int, query: tuple[int, int], chosen: list[int] | None
                  ) -> list[tuple[str, float]]:
    """``(label, attention share)`` per prompt key for one patch query (mean over heads): the TCPA image-pool
    entries in ``chosen`` order, or every prompt column of a model without per-token choices."""
    layout = cap.layout
    ta = token_attention(cap.batch_attention(layer), layout, query, heads="mean")
    if chosen is not None:
        weights = ta.pool_entry_weights("image_prompts")[0]
        return [(f"img {e}", float(weights[e])) for e in chosen]
    labels = key_labels(layout)
    start = layout.num_prefix
    row = cap.batch_attention(layer)[0].mean(0)[layout.patch_query_index(*query)]
    return [(labels[start + j], float(row[start + j])) for j in range(layout.num_prompt_keys)]


@register_view("selection", "Prompt selection", order=10)
def render(ctx: ImageContext) -> None:
    """Draw the prompt-selection page."""
    st.subheader("Per-token prompt selection")
    body(ctx)


@st.fragment
def body(ctx: ImageContext) -> None:
    """Everything that follows the patch and the layer (reruns alone when they change)."""
    state.show_notes()
    lm, cap, image = ctx.model, ctx.tcpa_capture, ctx.image
    layout = cap.layout
    h, w = layout.grid_size
    row, col = state.patch()
    layer = state.layer()
    figures: list[ExportFigure] = []
    stem = f"{ctx.stem}_patch{row}-{col}_layer{layer}"

    left, right = st.columns([1, 1.5])
    with left:
        patch_panels(state.GRID_CHART, [PatchPanel("", as_rgb_uint8(image.display))], (h, w), (row, col),
                     title=f"{image.name}: click a patch", lines=True, height=340, box_colour=SELECTED_COLOUR)
        figures.append(ExportFigure("image and patch grid",
                                    lambda: image_grid_figure(image.display, (h, w), (row, col), image.name),
                                    lambda: image_grid_matplotlib(image.display, (h, w), (row, col), image.name)))
        patch_inputs((h, w))
        layer_slider(cap.depth)
    if not lm.has_selection or cap.image_assign is None:
        with right:
            st.info(f"The model {lm.info.label} uses method {lm.label!r}, which has no per-token prompt matching; "
                    "choose a TCPA checkpoint in the sidebar to see prompt selections. Its attention is shown in "
                    "the Attention view.")
        export_bar(figures, key="sel_export", stem=stem)
        return

    cls_pool, image_pool = pool_sizes(layout)
    patch_index = row * w + col
    chosen = [int(e) for e in cap.image_assign[layer, patch_index]]
    with right:
        st.markdown(f"#### Selected patch ({row}, {col}) at layer {layer}")
        st.markdown(f"Image prompts selected by patch ({row}, {col}) at layer {layer}, rank 1 (most similar key) "
                    f"first: **{', '.join(f'img {e}' for e in chosen)}**")
        atlas_link(layer, chosen, cap.cls_assign[layer].tolist() if cap.cls_assign is not None else [])
        tcpa_shares = prompt_shares(cap, layer, (row, col), chosen)
        base = ctx.baseline_capture if ctx.baseline is not None else None
        base_shares = prompt_shares(base, layer, (row, col), None) if base is not None else None
        base_name = f"baseline {ctx.baseline.label}: all {len(base_shares)} prompts" if base_shares else "baseline"
        share_title = f"attention share of patch ({row}, {col}) to each prompt, layer {layer}, mean over heads"
        tcpa_name = f"TCPA: its {len(chosen)} selected image prompts (rank order)"
        st.html(prompt_share_html(tcpa_shares, base_shares, share_title, tcpa_name, base_name))
        figures.append(ExportFigure("prompt attention shares", lambda: prompt_share_figure(
            tcpa_shares, base_shares, share_title, base_name, tcpa_name), lambda: share_matplotlib(
            tcpa_shares, base_shares, share_title)))
        total = sum(v for _, v in tcpa_shares)
        line = f"TCPA gives its selected prompts {total:.3f} of this row"
        if base_shares:
            line += f"; the baseline gives its {len(base_shares)} prompts {sum(v for _, v in base_shares):.3f}"
        elif ctx.baseline is not None:
            line += f"; the baseline ({ctx.baseline.label}) has no prompt keys"
        st.caption(line + ". Shares are attention weights after the mask, averaged over heads; TCPA rows sum to "
                   "less than 1 because the unselected prompts' share is removed without renormalising.")

    panel = st.segmented_control("Lower panel", list(PANELS), format_func=PANELS.get, key="sel_panel",
                                 default="patch")
    if panel == "patch":
        assign = cap.image_assign[:, patch_index]
        name = f"image prompts chosen by patch ({row}, {col})"
        st.html(selection_table_html(assign, image_pool, f"{name}, per layer", highlight=layer))
        figures.append(ExportFigure("image prompts of the selected patch",
                                    lambda: selection_table_figure(assign, image_pool, f"{name}, per layer", layer),
                                    lambda: selection_table_matplotlib(assign, image_pool, name)))
    elif panel == "cls":
        if cap.cls_assign is not None:
            cls_assign = cap.cls_assign
            cls_name = "CLS prompts chosen by the CLS token"
            st.html(selection_table_html(cls_assign, cls_pool, f"{cls_name}, per layer", highlight=layer, pool="CLS"))
            st.caption(f"Layer {layer}: CLS prompts {', '.join(f'cls {int(e)}' for e in cls_assign[layer])}")
            figures.append(ExportFigure(cls_name, lambda: selection_table_figure(
                cls_assign, cls_pool, f"{cls_name}, per layer", layer, "CLS"),
                lambda: selection_table_matplotlib(cls_assign, cls_pool, cls_name, "CLS")))
        else:
            st.info("This model has no CLS token, so there is no CLS-pool selection.")
    elif panel == "map":
        map_panel(ctx, layer, figures)
    elif panel == "usage":
        pool_usage_panel(ctx, figures)

    export_bar(figures, key="sel_export", stem=stem, csv={
        "CSV: image": ("assignments", lambda: assignments_csv(
            layout, {l: cap.cls_assign[l][None] for l in range(cap.depth)} if cap.cls_assign is not None else None,
            {l: cap.image_assign[l][None] for l in range(cap.depth)}, [image.name],
            labels=[image.label], predictions=[int(np.argmax(cap.probs))])),
        **batch_csv(ctx),
    })


def atlas_link(layer: int, image_entries: list[int], cls_entries: list[int]) -> None:
    """A selected prompt (the patch's image prompts, then the CLS token's) and a button opening its page in the
    Prompt atlas view at this layer."""
    options = [f"image {e}" for e in image_entries] + [f"cls {int(e)}" for e in cls_entries]
    pick, go_button = st.columns([3, 1], vertical_alignment="bottom")
    choice = pick.selectbox("Selected prompt to open in the prompt atlas", options, key="sel_atlas_entry",
                            format_func=lambda o: o.replace("image", "img", 1))
    if go_button.button("Open in atlas", key="sel_atlas_open") and choice is not None:
        pool, entry = choice.split()
        open_entry(layer, pool, int(entry))
        st.rerun(scope="app")


def share_matplotlib(tcpa: list[tuple[str, float]], baseline: list[tuple[str, float]] | None, title: str):
    """Static version of the prompt-share bars."""
    from matplotlib.figure import Figure

    panels = [("TCPA (selected)", tcpa, "#1f77b4")] + ([("baseline", baseline, "#ff7f0e")] if baseline else [])
    fig = Figure(figsize=(4 + 0.25 * sum(len(p[1]) for p in panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False,
                        width_ratios=[max(len(p[1]), 1) for p in panels])[0]
    for ax, (name, entries, colour) in zip(axes, panels, strict=True):
        ax.bar([n for n, _ in entries], [v for _, v in entries], color=colour)
        ax.set_title(name, fontsize="medium")
        ax.tick_params(axis="x", labelrotation=90, labelsize="x-small")
    axes[0].set_ylabel("attention share")
    fig.suptitle(title, fontsize="medium")
    return fig


def map_panel(ctx: ImageContext, layer: int, figures: list[ExportFigure]) -> None:
    """The image with every patch coloured by its selected prompt (or selected set) at ``layer``."""
    cap, image = ctx.tcpa_capture, ctx.image
    layout = cap.layout
    controls = st.columns(2)
    mode = controls[0].radio("Colour patches by", ["top1", "set"], horizontal=True, key="sel_map_mode",
                             persist_state="page",
                             format_func=lambda m: "prompt at a rank" if m == "top1" else "whole selected set")
    top_k = int(cap.image_assign.shape[-1])
    rank_key = state.default("sel_map_rank", 1, 1, top_k)
    rank = int(controls[1].number_input(f"Rank in the top-k list (1-{top_k}, 1 = most similar)", min_value=1,
                                        max_value=top_k, step=1, key=rank_key, persist_state="page",
                                        disabled=mode != "top1"))
    map_assign = cap.image_assign[layer]
    what = f"image prompt at rank {rank} of every patch" if mode == "top1" else "patches with the same selected set"
    map_title = f"layer {layer}: {what}"
    fig = selection_map_figure(map_assign, layout, image.display, mode, rank, map_title)
    st.plotly_chart(fig, key="sel_map", config=CHART_CONFIG)
    figures.append(ExportFigure("image coloured by selected prompt", fig, lambda: selection_map_matplotlib(
        map_assign, layout, image.display, mode, rank, map_title)))


def pool_usage_panel(ctx: ImageContext, figures: list[ExportFigure]) -> None:
    """Pool usage of the TCPA model over the first N test images, with every statistic defined."""
    if ctx.dataset is None:
        st.info("Pool usage needs the test set, which could not be opened.")
        return
    lm = ctx.model
    total = len(ctx.dataset)
    controls = st.columns(2)
    count = controls[0].number_input("Test images for pool usage", min_value=1, max_value=total, step=8,
                                     key=state.default(BATCH_KEY, min(DEFAULT_BATCH, total), 1, total),
                                     persist_state="page")
    pool = controls[1].radio("Pool", ["image", "cls"], horizontal=True, key="sel_pool", persist_state="page",
                             format_func=lambda p: "image pool" if p == "image" else "CLS pool")
    with st.spinner("Running the batch..."):
        batch = batch_selection(lm.key, ctx.data_key, int(count), lm, ctx.dataset)
    stats = batch.stats
    if pool == "cls" and not batch.cls_assign:
        st.info("This model has no CLS token, so there is no CLS-pool usage.")
        return
    title = f"{'image' if pool == 'image' else 'CLS'} pool usage over {batch.count} test images"
    fig = plot_pool_usage_plotly(stats, pool=pool, title=title)
    fig.update_layout(width=None, height=360, margin=dict(l=10, r=10, t=50, b=10))
    st.plotly_chart(fig, key="sel_usage", config=CHART_CONFIG)
    figures.append(ExportFigure(f"{pool} pool usage", fig,
                                lambda: plot_pool_usage_matplotlib(stats, pool=pool, style="heatmap", title=title)))
    present = {k: v for k, v in STATS.items() if any(f"{pool}_{k}" in s for s in stats)}
    frame = pd.DataFrame([{"layer": s["layer"], **{label: s.get(f"{pool}_{k}") for k, (label, _) in present.items()}}
                          for s in stats]).set_index("layer")
    st.dataframe(frame.round(3), width="stretch")
    st.caption("  \n".join(f"**{label}**: {text}." for label, text in present.values()))


def batch_csv(ctx: ImageContext) -> dict[str, tuple[str, Callable[[], bytes]]]:
    """The CSV export of the batch assignments, with label and prediction columns."""
    if ctx.dataset is None or not ctx.model.has_selection:
        return {}
    count = int(st.session_state.get(BATCH_KEY, min(DEFAULT_BATCH, len(ctx.dataset))))
    lm, dataset, data_key = ctx.model, ctx.dataset, ctx.data_key

    def build() -> bytes:
        batch = batch_selection(lm.key, data_key, count, lm, dataset)
        return assignments_csv(batch.layout, batch.cls_assign or None, batch.image_assign,
                               [f"test{i}" for i in range(batch.count)], labels=batch.labels,
                               predictions=batch.predictions)

    return {"CSV: batch": (f"assignments_first_{count}_test_images", build)}
