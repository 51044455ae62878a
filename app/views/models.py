"""Models page: configuration, accuracy and parameter counts of the chosen checkpoints."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from app.loading import CheckpointInfo, DashboardModel, summary_test_accuracy
from app.views.registry import PageContext, register_view
from tcpa_core import PromptConfig, TCPAError


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
