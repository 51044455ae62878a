"""Rank page: rank measures of the attention matrices per layer, baseline vs TCPA."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state
from app.export import ExportFigure, export_bar
from app.loading import rank_aggregate
from app.views.registry import ImageContext, register_view
from app.widgets import CHART_CONFIG
from tcpa_viz import plot_rank_vs_layer_matplotlib, plot_rank_vs_layer_plotly

BLOCKS = {
    "full": "whole matrix",
    "tokens": "token columns only (prefix + patches)",
    "patches": "patch rows x patch columns",
    "prompts": "prompt columns",
}
MEASURES = ("effective_rank", "stable_rank", "numerical_rank", "energy_rank_0.9", "energy_rank_0.99")


@register_view("rank", "Rank", order=40)
def render(ctx: ImageContext) -> None:
    """Draw the rank page."""
    st.subheader("Rank of the attention matrices per layer")
    if ctx.dataset is None:
        st.info("The rank view needs the test set, which could not be opened.")
        return
    controls = st.columns(4)
    total = len(ctx.dataset)
    count_key = state.default("rank_count", min(8, total), 1, total)
    count = int(controls[0].number_input("Test images", min_value=1, max_value=total, step=1, key=count_key,
                                         persist_state="page"))
    block = controls[1].selectbox("Submatrix", list(BLOCKS), format_func=BLOCKS.get, key="rank_block",
                                  persist_state="page")
    measure = controls[2].selectbox("Measure", MEASURES, key="rank_measure", persist_state="page")
    heads = controls[3].radio("Heads", ["per-head", "head-mean"], key="rank_heads", persist_state="page",
                              horizontal=True)
    aggregates = {}
    for role, lm, cap in ctx.models():
        if block == "prompts" and cap.layout.num_prompt_keys == 0:
            st.info(f"{lm.info.label} has no prompt columns; it is left out of this submatrix.")
            continue
        with st.spinner(f"Measuring {lm.info.label}..."):
            aggregates[f"{role} ({lm.label})"] = rank_aggregate(lm.key, ctx.data_key, count, block, lm, ctx.dataset)
    if not aggregates:
        return
    title = f"{measure.replace('_', ' ')} per layer, {BLOCKS[block]} ({heads}, {count} images)"
    fig = plot_rank_vs_layer_plotly(aggregates, measure=measure, heads=heads, title=title)
    fig.update_layout(width=None, height=460)
    st.plotly_chart(fig, key="rank_plot", config=CHART_CONFIG)
    table = pd.DataFrame({
        label: {r["layer"]: r["mean"] for r in rows if r["measure"] == measure and r["heads"] == heads}
        for label, rows in aggregates.items()
    })
    table.index.name = "layer"
    st.dataframe(table.round(3), width="stretch")
    st.caption("Mean over images (and heads for per-head) of each measure; effective rank = exp(entropy of the "
               "normalised singular values), stable rank = ||A||_F^2 / ||A||_2^2.")
    figure = ExportFigure("rank per layer", fig, lambda: plot_rank_vs_layer_matplotlib(
        aggregates, measure=measure, heads=heads, title=title))
    export_bar([figure], key="rank_export", stem=f"rank_{block}_{measure}")
