"""Features page: t-SNE of the pre-logits features of both models with silhouette and k-NN numbers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state
from app.export import ExportFigure, export_bar
from app.loading import tsne
from app.views.registry import ImageContext, register_view
from app.widgets import CHART_CONFIG
from tcpa_viz import plot_tsne_matplotlib, plot_tsne_plotly

REQUEST = "tsne_request"
METRICS = {
    "silhouette_features": "silhouette (features)",
    "silhouette_embedding": "silhouette (t-SNE)",
    "knn_accuracy_features": "k-NN accuracy (features)",
    "knn_accuracy_embedding": "k-NN accuracy (t-SNE)",
    "trustworthiness": "trustworthiness",
    "knn_chance": "majority-class rate",
}


@register_view("features", "Features (t-SNE)", order=30)
def render(ctx: ImageContext) -> None:
    """Draw the t-SNE page (computed on request, then cached)."""
    st.subheader("Features: t-SNE of the pre-logits features")
    if ctx.dataset is None:
        st.info("The t-SNE needs the test set, which could not be opened.")
        return
    total = len(ctx.dataset)
    if total < 5:
        st.info(f"The test set has only {total} images; t-SNE needs at least 5.")
        return
    controls = st.columns([1, 1, 1], vertical_alignment="bottom")
    count_key = state.default("tsne_count", min(300, total), 5, total)
    perplexity_key = state.default("tsne_perplexity", 30.0, 2.0, 100.0)
    count = int(controls[0].number_input("Test images", min_value=5, max_value=total, step=50, key=count_key,
                                         persist_state="page"))
    perplexity = float(controls[1].number_input("Perplexity", min_value=2.0, max_value=100.0, step=5.0,
                                                key=perplexity_key, persist_state="page"))
    if controls[2].button("Run t-SNE", key="tsne_run", type="primary"):
        st.session_state[REQUEST] = (count, perplexity)
    if st.session_state.get(REQUEST) != (count, perplexity):
        st.caption("Press Run t-SNE to embed the features of both models (about 5 s for 300 demo images on "
                   "2 CPU cores; results are cached).")
        return
    models = ctx.models()
    names = ctx.model.class_names
    figures: list[ExportFigure] = []
    rows = {}
    columns = st.columns(len(models))
    for column, (role, lm, _) in zip(columns, models, strict=True):
        with column, st.spinner(f"t-SNE of {lm.info.label}..."):
            result = tsne(lm.key, ctx.data_key, count, perplexity, lm, ctx.dataset)
            title = f"{role}: {lm.info.label}"
            fig = plot_tsne_plotly(result, class_names=names, title=title)
            fig.update_layout(width=None, height=520)
            st.plotly_chart(fig, key=f"tsne_{role}", config=CHART_CONFIG)
            figures.append(ExportFigure(f"{role} t-SNE", fig, lambda result=result, title=title:
                                        plot_tsne_matplotlib(result, class_names=names, title=title)))
            rows[f"{role} ({lm.method})"] = {label: result.metrics.get(key) for key, label in METRICS.items()}
    st.dataframe(pd.DataFrame(rows).round(3), width="stretch")
    st.caption(f"{count} test images; k-NN is leave-one-out with k = 5; silhouette uses the class labels.")
    export_bar(figures, key="tsne_export", stem=f"tsne_{count}")
