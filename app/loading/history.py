"""Training history of a checkpoint's run (``st.cache_data``): the per-epoch records that ``tcpa-viz train``
writes into the run folder's ``summary.json`` (``tcpa_core.train``: ``history``, one dict per epoch with
``epoch``, ``train_loss``, ``train_acc``, ``val_acc``, ``val_loss``, ``random_selection`` ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from app.loading.atlas import run_folder

SUMMARY_FILE = "summary.json"


def history_file(weights: str) -> Path:
    """``summary.json`` of the run that wrote the checkpoint (the folder above ``best/`` or ``last/``)."""
    return run_folder(weights) / SUMMARY_FILE


def history_stamp(weights: str) -> float:
    """Modification time of the run's ``summary.json`` (0 when absent): the cache key that notices a rewrite."""
    path = history_file(weights)
    return path.stat().st_mtime if path.is_file() else 0.0


@st.cache_data(max_entries=16, show_spinner=False)
def run_history(weights: str, stamp: float) -> list[dict[str, Any]]:
    """The per-epoch records of the checkpoint's run, in epoch order; empty when the run folder has no readable
    ``summary.json`` with a ``history`` (``stamp`` = :func:`history_stamp`, part of the cache key only)."""
    path = history_file(weights)
    try:
        history = json.loads(path.read_text(encoding="utf-8")).get("history")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(history, list):
        return []
    records = [dict(h) for h in history if isinstance(h, dict) and isinstance(h.get("epoch"), int | float)]
    return sorted(records, key=lambda h: h["epoch"])
