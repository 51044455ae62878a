"""Attention page: layer / head / query selectors; per model a 2D overlay of the query's attention, the
whole attention matrix, an optional 3D surface of selected rows, and (TCPA) the mask; baseline and TCPA
side by side."""

from __future__ import annotations

import streamlit as st

from app import state
from app.export import ExportFigure, export_bar
from app.figures import mask_figure, mask_matplotlib
from app.views.registry import ImageContext, register_view
from app.widgets import CHART_CONFIG, head_options, layer_slider, parse_heads
from tcpa_viz import (
    default_surface_queries,
    plot_attention_heatmap_matplotlib,
    plot_attention_heatmap_plotly,
    plot_attention_surface_matplotlib,
    plot_attention_surface_plotly,
    plot_overlay_matplotlib,
    plot_overlay_plotly,
    token_attention,
)


@register_view("attention", "Attention", order=20)
def render(ctx: ImageContext) -> None:
    """Draw the attention page."""
    st.subheader("Attention")
    models = ctx.models()
    depth = ctx.tcpa_capture.depth
    num_heads = min(lm.num_heads for _, lm, _ in models)
    options = head_options(num_heads)
    if st.session_state.get(state.HEADS) not in options:
        st.session_state[state.HEADS] = "mean"
    row, col = state.patch()
    top = st.columns([2, 1, 1.3, 1.2])
    with top[0]:
        layer_slider(depth)
    heads_choice = top[1].selectbox("Heads", options, **state.bound(state.HEADS))
    query_choice = top[2].radio("Query token", ["patch", "cls"], horizontal=True, key="att_query", persist_state="page",
                                format_func=lambda q: f"patch ({row}, {col})" if q == "patch" else "CLS")
    with top[3]:
        raw = st.toggle("Before the mask", key="att_raw", persist_state="page",
                        help="TCPA: attention before the mask is applied")
        show_3d = st.toggle("3D surface", key="att_3d", persist_state="page")
    layer = state.layer()
    heads = parse_heads(heads_choice)
    query = (row, col) if query_choice == "patch" else "cls"
    if query == "cls" and not ctx.tcpa_capture.layout.has_cls_token:
        st.info("This model has no CLS token; showing the selected patch instead.")
        query = (row, col)
    image = ctx.image
    figures: list[ExportFigure] = []
    columns = st.columns(len(models))
    for column, (role, lm, cap) in zip(columns, models, strict=True):
        with column:
            st.markdown(f"**{role}: {lm.info.label}** ({lm.method})")
            layout = cap.layout
            attn = cap.batch_attention(layer, raw=raw)
            tag = f"{role}, layer {layer}, heads {heads}"
            ta = token_attention(attn, layout, query, heads=heads)
            box = query if isinstance(query, tuple) else None
            title = f"{ta.query_label} attention to patches ({tag})"
            fig = plot_overlay_plotly(image.display, ta.grid[0], box=box, title=title)
            fig.update_layout(width=None, height=420)
            st.plotly_chart(fig, key=f"att_overlay_{role}", config=CHART_CONFIG)
            totals = {k: float(v[0]) for k, v in ta.group_totals().items()}
            prompt_mass = sum(totals[g] for g in ("cls_prompts", "image_prompts", "prompts"))
            st.caption(f"{ta.query_label}: patches {totals['patches']:.3f}, prompts {prompt_mass:.3f}, prefix "
                       f"{totals['prefix']:.3f}, row sum {float(ta.row_sum[0]):.3f}")
            figures.append(ExportFigure(f"{role} overlay", fig, lambda ta=ta, box=box, title=title:
                                        plot_overlay_matplotlib(image.display, ta.grid[0], box=box, title=title)))

            hm_title = f"attention matrix ({tag})"
            fig = plot_attention_heatmap_plotly(attn, layout, heads=heads, title=hm_title)
            fig.update_layout(width=None, height=480)
            st.plotly_chart(fig, key=f"att_heatmap_{role}", config=CHART_CONFIG)
            figures.append(ExportFigure(f"{role} attention matrix", fig,
                                        lambda attn=attn, layout=layout, hm_title=hm_title:
                                        plot_attention_heatmap_matplotlib(attn, layout, heads=heads, title=hm_title)))

            if show_3d:
                rows = sorted({*default_surface_queries(layout), layout.patch_query_index(row, col)})
                sf_title = f"attention rows in 3D ({tag})"
                fig = plot_attention_surface_plotly(attn, layout, queries=rows, heads=heads, title=sf_title)
                fig.update_layout(width=None, height=520)
                st.plotly_chart(fig, key=f"att_surface_{role}", config=CHART_CONFIG)
                figures.append(ExportFigure(f"{role} 3D surface", fig,
                                            lambda attn=attn, layout=layout, rows=rows, sf_title=sf_title:
                                            plot_attention_surface_matplotlib(attn, layout, queries=rows,
                                                                              heads=heads, title=sf_title)))

            mask = cap.mask[layer].numpy()
            if not mask.all():
                mk_title = f"TCPA mask, layer {layer} (dark = allowed)"
                fig = mask_figure(mask, layout, mk_title)
                st.plotly_chart(fig, key=f"att_mask_{role}", config=CHART_CONFIG)
                figures.append(ExportFigure(f"{role} mask", fig, lambda mask=mask, layout=layout, mk_title=mk_title:
                                            mask_matplotlib(mask, layout, mk_title)))
            else:
                st.caption(f"No mask: every query of {lm.method!r} sees every key.")
    export_bar(figures, key="att_export", stem=ctx.stem)
