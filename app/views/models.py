"""Models page: configuration, accuracy and parameter counts of the chosen checkpoints; their training curves
(from the runs' ``summary.json``); and, on request, both models evaluated on a split: per-class accuracy and a
confusion matrix per model with the true classes whose rows differ between the models outlined and listed.

The predictions are computed once per (model, split, images) (``app.loading.split_predictions``, cached) and
the evaluation part is an ``st.fragment``: its controls rerun only that part."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from app.export import export_bar
from app.figures import class_accuracy_figure, confusion_figure, training_curves_figure
from app.loading import (
    CheckpointInfo,
    DashboardModel,
    confusion_matrix,
    dataset_labels,
    dataset_spec,
    differing_rows,
    history_stamp,
    open_dataset,
    per_class_accuracy,
    run_history,
    split_predictions,
    stratified_indices,
    summary_test_accuracy,
)
from app.views.registry import PageContext, register_view
from app.widgets import CHART_CONFIG
from tcpa_core import PromptConfig, TCPAError
from tcpa_core.data import dataset_size

SPLITS = {"test": "test split", "val": "validation split"}
EVAL_REQUEST = "models_eval_request"
DEFAULT_IMAGES = 2000


def _percent(value: Any) -> str:
    return f"{100 * float(value):.2f} %" if isinstance(value, int | float) else "-"


def describe(info: CheckpointInfo, loaded: DashboardModel | None, summary: dict[str, Any]) -> dict[str, Any]:
    """One column of the comparison table."""
    meta = info.meta
    cfg = meta.get("prompt_config") or {}
    metrics = meta.get("metrics") or {}
    best = meta.get("best") or {}
    column: dict[str, Any] = {"checkpoint": info.label, "backbone": info.backbone,
                              "backbone fingerprint": info.fingerprint[:12]}
    try:
        spec = PromptConfig.from_dict(cfg).spec
    except (TCPAError, TypeError, ValueError):
        spec = None
    if spec is not None:
        column["method"] = spec.display_name
        column["role"] = "TCPA family" if spec.role == "tcpa" else "baseline"
    fields = [k for k in cfg if spec is None or k in spec.config_fields]
    for key in fields:
        if key != "method" or spec is None:
            column[key] = str(cfg[key])
    column["classes"] = str(meta.get("num_classes", "-"))
    column["epoch"] = str(meta.get("epoch", "-"))
    column["val accuracy"] = _percent(metrics.get("val_acc", best.get("val_acc")))
    column["test accuracy"] = _percent(summary_test_accuracy(info, summary))
    if loaded is not None:
        for name, value in loaded.counts.items():
            column[f"{name} parameters"] = f"{value:,}"
        column["input size"] = "x".join(str(v) for v in loaded.data_config["input_size"][1:])
        column["patch grid"] = "x".join(str(v) for v in loaded.grid_size)
        column["depth / heads"] = f"{loaded.depth} / {loaded.num_heads}"
    dataset = meta.get("dataset") or {}
    column["dataset"] = str(dataset.get("name", "-"))
    column["created"] = str(meta.get("created", "-"))
    return column


def merged_order(columns: list[dict[str, Any]]) -> list[str]:
    """Row names of all columns; a row missing from earlier columns goes right after its predecessor."""
    order: list[str] = []
    for column in columns:
        previous = None
        for key in column:
            if key not in order:
                order.insert(order.index(previous) + 1 if previous is not None else 0, key)
            previous = key
    return order


@register_view("models", "Models", order=50, needs_image=False)
def render(ctx: PageContext) -> None:
    """Draw the comparison of the chosen checkpoints."""
    entries, summary = ctx.entries, ctx.summary
    st.subheader("Models")
    if not entries:
        st.info("No model chosen.")
        return
    columns = {f"{role}: {info.label}": describe(info, lm, summary) for role, info, lm in entries}
    rows = merged_order(list(columns.values()))
    table = pd.DataFrame({name: [column.get(row, "-") for row in rows] for name, column in columns.items()},
                         index=rows)
    st.dataframe(table, width="stretch", height=40 + 35 * len(rows))
    st.caption("Trainable = prompts + input prompt + head (the backbone is frozen). Test accuracy comes from the "
               "demo summary.json when the checkpoint is listed there; val accuracy from the checkpoint itself.")
    for role, info, _ in entries:
        with st.expander(f"{role}: full JSON description of {info.label}"):
            st.json(info.meta, expanded=1)
    training_section(entries)
    evaluation_section(ctx)


def training_section(entries: list[tuple[str, CheckpointInfo, DashboardModel | None]]) -> None:
    """Train loss and validation accuracy per epoch of every chosen checkpoint's run, on one chart."""
    st.markdown("#### Training curves")
    runs, missing = [], []
    for role, info, _ in entries:
        history = run_history(info.weights, history_stamp(info.weights))
        if history:
            runs.append((role, info.label, history))
        else:
            missing.append(info.label)
    if runs:
        fig = training_curves_figure(runs, "training curves of the chosen checkpoints' runs")
        st.plotly_chart(fig, key="models_curves", config=CHART_CONFIG)
        st.caption("**train loss**: mean over the epoch's training images of the cross-entropy plus the prompt-pool "
                   "loss term (weighted by the run's pool_loss_weight), in training mode (prompt dropout; open "
                   "markers: epochs with random prompt selection). **validation accuracy**: share of the validation "
                   "split classified correctly after the epoch (eval mode, top-k selection); star: the best epoch, "
                   "the one saved as `best`.")
    for label in missing:
        st.caption(f"No training history for {label}: its run folder has no summary.json with a `history` "
                   "(written by `tcpa-viz train`).")


def _split_key(spec_json: str, config_json: str, split: str) -> str:
    """Cache key of a split; the test split's is the one the image views use (their caches are shared)."""
    return f"{spec_json}|{config_json}" + ("" if split == "test" else f"|{split}")


@st.fragment
def evaluation_section(ctx: PageContext) -> None:
    """Both models on one split (on request): per-class accuracy and a confusion matrix per model with the rows
    that differ between the two outlined, and a table of those rows."""
    st.markdown("#### Accuracy per class and confusion matrices")
    models = [(role, lm) for role, _, lm in ctx.entries if lm is not None]
    if ctx.tcpa is None or not models:
        st.info("No loaded model to evaluate.")
        return
    controls = st.columns([1.2, 1, 1], vertical_alignment="bottom")
    split = str(controls[0].radio("Split", list(SPLITS), format_func=SPLITS.get, horizontal=True,
                                  key="models_split", persist_state="page") or "test")
    spec_json = json.dumps(dataset_spec(ctx.tcpa), sort_keys=True)
    try:
        dataset = open_dataset(spec_json, ctx.tcpa.data_key, split)
        total = dataset_size(dataset)
    except TCPAError as exc:
        st.error(f"Could not open the {SPLITS[split]}: {exc}")
        return
    count_key = f"models_images_{split}"
    if count_key not in st.session_state or not 1 <= int(st.session_state[count_key]) <= total:
        st.session_state[count_key] = min(DEFAULT_IMAGES, total)
    count = int(controls[1].number_input(f"Images (of {total}, class-stratified)", min_value=1, max_value=total,
                                         step=100, key=count_key))
    if controls[2].button("Evaluate both models", key="models_eval", type="primary"):
        st.session_state[EVAL_REQUEST] = (split, count)
    if st.session_state.get(EVAL_REQUEST) != (split, count):
        st.caption(f"Press Evaluate to run the models on {count} images of the {SPLITS[split]} (about 3 s per "
                   "model for the 360 demo test images on 2 CPU cores; results are cached).")
        return
    data_key = _split_key(spec_json, ctx.tcpa.data_key, split)
    labels_all = dataset_labels(data_key, dataset)
    indices = np.arange(total) if count >= total else stratified_indices(labels_all, count)
    num_classes = max(lm.model.num_classes for _, lm in models)
    names = list(ctx.tcpa.class_names) + [str(c) for c in range(len(ctx.tcpa.class_names), num_classes)]
    matrices: dict[str, np.ndarray] = {}
    for role, lm in models:
        with st.spinner(f"Evaluating {lm.info.label} on {count} images..."):
            labels, preds = split_predictions(lm.key, data_key, split, tuple(int(i) for i in indices), lm, dataset)
        matrices[role] = confusion_matrix(labels, preds, num_classes)
    images = next(iter(matrices.values())).sum(axis=1)
    accuracy_rows = [(role, per_class_accuracy(m), images) for role, m in matrices.items()]
    what = f"{len(indices)} images of the {SPLITS[split]}"
    st.plotly_chart(class_accuracy_figure(accuracy_rows, names, f"accuracy per class on {what}"),
                    key="models_class_accuracy", config=CHART_CONFIG)
    overall = ", ".join(f"{role} {np.trace(m) / max(m.sum(), 1):.1%}" for role, m in matrices.items())
    st.caption(f"**accuracy of a class**: share of the images of that true class that the model predicts as it "
               f"(correct / images of the class; hover for the counts). Overall on these images: {overall}.")
    roles = list(matrices)
    differing = differing_rows(matrices[roles[0]], matrices[roles[-1]]) if len(roles) == 2 else np.array([], int)
    panels = [(f"{role} ({lm.label})", matrices[role]) for role, lm in models]
    st.plotly_chart(confusion_figure(panels, names, differing, f"confusion matrices on {what}"),
                    key="models_confusion", config=CHART_CONFIG)
    st.caption("**confusion matrix**: cell (true class, predicted class) = number of images of that true class "
               "the model predicts as that class; the diagonal holds the correct ones. "
               + ("Outlined in red: the true classes whose rows differ between the two models (at least one "
                  "count is different)." if len(roles) == 2 else "Choose a baseline to compare the rows."))
    table = differing_table(matrices, names, differing)
    if len(roles) == 2:
        st.markdown(f"**{len(differing)} of {num_classes} classes with differing rows**"
                    + (" (counts per predicted class)" if len(differing) else ""))
        if len(differing):
            st.dataframe(table, width="stretch")
    stem = f"models_{split}_{len(indices)}_images"
    export_bar([], key="models_export", stem=stem, csv={
        "CSV: per class": ("accuracy_per_class", lambda: class_table(accuracy_rows, names).to_csv().encode()),
        "CSV: confusion": ("confusion_matrices", lambda: confusion_table(matrices, names).to_csv().encode()),
    })


def differing_table(matrices: dict[str, np.ndarray], names: list[str], rows: np.ndarray) -> pd.DataFrame:
    """For each true class in ``rows``, one line per model: its confusion row (count per predicted class)
    and the number correct."""
    records = []
    for row in rows:
        for role, matrix in matrices.items():
            records.append({"true class": names[row], "model": role, "correct": int(matrix[row, row]),
                            **{f"pred {names[c]}": int(matrix[row, c]) for c in range(len(names))}})
    return pd.DataFrame(records).set_index(["true class", "model"]) if records else pd.DataFrame()


def class_table(rows: list[tuple[str, np.ndarray, np.ndarray]], names: list[str]) -> pd.DataFrame:
    """Per class: the images and each model's accuracy."""
    table = pd.DataFrame({"class": names, "images": rows[0][2]})
    for role, accuracy, _ in rows:
        table[f"{role} accuracy"] = accuracy
    return table.set_index("class")


def confusion_table(matrices: dict[str, np.ndarray], names: list[str]) -> pd.DataFrame:
    """Every model's confusion matrix stacked: index (model, true class), one column per predicted class."""
    frames = {role: pd.DataFrame(m, index=pd.Index(names, name="true class"), columns=[f"pred {n}" for n in names])
              for role, m in matrices.items()}
    return pd.concat(frames, names=["model"])
