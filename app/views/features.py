"""Features page: t-SNE of the pre-logits features of both models on a class-stratified test sample, linked
to the images: a click on a point makes that test image the current one (every view follows); the current
image is ringed and misclassified points are crosses. Cluster numbers and per-class accuracy below, each defined.
The page runs no forward pass on the current image (its predictions come from the embedded sample), so a click on
a point costs only the redraw."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from app import state
from app.export import ExportFigure, export_bar
from app.figures import tsne_figure, tsne_legend_html
from app.loading import dataset_labels, stratified_indices, tsne
from app.views.registry import ImagePageContext, register_view
from app.widgets import CHART_CONFIG
from tcpa_viz import plot_tsne_matplotlib

REQUEST = "tsne_request"
METRICS = {
    "silhouette_features": ("silhouette (features)", "mean silhouette of the class labels in the feature space "
                            "(-1 to 1, higher = classes better separated)"),
    "silhouette_embedding": ("silhouette (t-SNE)", "the same in the 2D t-SNE map"),
    "knn_accuracy_features": ("k-NN accuracy (features)", "leave-one-out 5-nearest-neighbour accuracy in the "
                              "feature space"),
    "knn_accuracy_embedding": ("k-NN accuracy (t-SNE)", "the same in the 2D map"),
    "trustworthiness": ("trustworthiness", "how well the map keeps the features' nearest neighbours (0 to 1)"),
    "knn_chance": ("majority-class rate", "accuracy of always answering the most frequent class (chance level "
                   "for the k-NN numbers)"),
}


@register_view("features", "Features (t-SNE)", order=30, needs_capture=False)
def render(ctx: ImagePageContext) -> None:
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
    count = int(controls[0].number_input("Test images (class-stratified)", min_value=5, max_value=total, step=50,
                                         key=count_key, persist_state="page"))
    perplexity = float(controls[1].number_input("Perplexity", min_value=2.0, max_value=100.0, step=5.0,
                                                key=perplexity_key, persist_state="page"))
    if controls[2].button("Run t-SNE", key="tsne_run", type="primary"):
        st.session_state[REQUEST] = (count, perplexity)
    if st.session_state.get(REQUEST) != (count, perplexity):
        st.caption("Press Run t-SNE to embed the features of both models (about 5 s for 300 demo images on "
                   "2 CPU cores; results are cached).")
        return
    labels_all = dataset_labels(ctx.data_key, ctx.dataset)
    indices = stratified_indices(labels_all, count)
    key = tuple(int(i) for i in indices)
    current = None
    if ctx.image.label is not None and ctx.image.name.startswith("test image "):
        current = int(ctx.image.name.rsplit(" ", 1)[1])
    models = ctx.compared()
    names = ctx.model.class_names
    figures: list[ExportFigure] = []
    rows, per_class = {}, {}
    predicted = []
    columns = st.columns([1] * len(models) + [0.45])
    for column, (role, lm) in zip(columns, models, strict=False):
        with column, st.spinner(f"t-SNE of {lm.info.label}..."):
            result, preds = tsne(lm.key, ctx.data_key, key, perplexity, lm, ctx.dataset)
            labels = np.asarray(result.labels)
            title = f"{role}: {lm.info.label}"
            fig = tsne_figure(result.embedding, labels, preds, indices, names, current, title)
            chart = f"tsne_{role}"
            fig.update_layout(meta=state.chart_meta(chart))
            st.plotly_chart(fig, key=chart, on_select=partial(state.image_click, chart),
                            selection_mode="points", config=CHART_CONFIG)
            figures.append(ExportFigure(f"{role} t-SNE", fig, lambda result=result, title=title:
                                        plot_tsne_matplotlib(result, class_names=names, title=title)))
            label = f"{role} ({lm.label})"
            rows[label] = {name: result.metrics.get(k) for k, (name, _) in METRICS.items()}
            rows[label]["accuracy on the sample"] = float(np.mean(preds == labels))
            per_class[label] = {names[c] if c < len(names) else str(c): float(np.mean(preds[labels == c] == c))
                                for c in np.unique(labels)}
            if current is not None and current in key:
                guess = int(preds[key.index(current)])
                predicted.append(f"{role} predicts {names[guess] if guess < len(names) else guess}")
    st.html(tsne_legend_html(labels, names))
    with columns[-1]:
        label = ctx.image.label
        truth = f", label {names[label]}" if label is not None and label < len(names) else ""
        st.image(ctx.image.display, caption=f"current: {ctx.image.name}{truth} (click a point to change it)"
                 + "".join(f"; {p}" for p in predicted), width="stretch")
    st.dataframe(pd.DataFrame(rows).round(3), width="stretch")
    table = pd.DataFrame(per_class)
    table.index.name = "class"
    table["images"] = [int(np.sum(labels == c)) for c in np.unique(labels)]
    st.markdown("**Accuracy per class on the sample**")
    st.dataframe(table.round(3).T, width="stretch")
    st.caption("Crosses: misclassified by that model; ring: the current image. "
               f"{len(indices)} test images, the classes balanced (round-robin over the classes). "
               + " ".join(f"**{name}**: {text}." for name, text in METRICS.values()))
    export_bar(figures, key="tsne_export", stem=f"tsne_{len(indices)}")
