"""Sidebar controls: page choice, checkpoint pickers (listed and user-added) and the image source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from app.loading import CheckpointInfo, DashboardModel, default_choice, describe_checkpoint, discover_checkpoints
from app.views import list_views
from tcpa_core import TCPAError

ADDED = "added_checkpoints"
ADD_ERROR = "add_checkpoint_error"
TCPA_KEY = "tcpa_checkpoint"
BASELINE_KEY = "baseline_checkpoint"
PATH_INPUT = "checkpoint_path"
NO_BASELINE = ""
VIEW_REQUEST = "view_request"
"""A view name another page asks to switch to (read before the view radio is drawn, then cleared)."""
UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"]
UPLOAD_GEN = "upload_generation"
"""Bumped after a rejected upload: the uploader gets a new key, so the bad file is cleared."""


@dataclass
class ModelChoice:
    """What the checkpoint pickers produced."""

    infos: list[CheckpointInfo]
    tcpa: CheckpointInfo | None
    baseline: CheckpointInfo | None
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def view_picker() -> str:
    """The name of the page to draw, among the registered views."""
    views = {v.name: v.label for v in list_views()}
    requested = st.session_state.pop(VIEW_REQUEST, None)
    if requested in views:
        st.session_state["view"] = requested
    if st.session_state.get("view") not in views:
        st.session_state["view"] = next(iter(views))
    return st.radio("View", list(views), key="view", format_func=views.get)


def _add_checkpoint() -> None:
    """Callback of the "Add" button: validate the typed path and select the checkpoint it names."""
    path = str(st.session_state.get(PATH_INPUT, "")).strip()
    st.session_state[ADD_ERROR] = None
    try:
        info = describe_checkpoint(path)
    except TCPAError as exc:
        st.session_state[ADD_ERROR] = f"Cannot add the checkpoint {path!r}: {exc}"
        return
    added = st.session_state.setdefault(ADDED, [])
    if path not in added:
        added.append(path)
    st.session_state[TCPA_KEY if info.tcpa_family else BASELINE_KEY] = info.weights
    st.session_state[PATH_INPUT] = ""


def model_pickers(demo_dir: Path, extra_paths: Sequence[str]) -> ModelChoice:
    """Pickers for the TCPA and baseline checkpoints among the listed and the added ones."""
    found, problems = discover_checkpoints(str(demo_dir))
    infos = list(found)
    errors = []
    if st.session_state.get(ADD_ERROR):
        errors.append(st.session_state[ADD_ERROR])
    for path in [*extra_paths, *st.session_state.get(ADDED, [])]:
        try:
            info = describe_checkpoint(path)
        except TCPAError as exc:
            errors.append(f"Cannot use the checkpoint {path!r}: {exc}")
            continue
        if all(i.weights != info.weights for i in infos):
            infos.append(info)
    st.markdown("### Models")
    choice = ModelChoice(infos=infos, tcpa=None, baseline=None, errors=errors, problems=problems)
    if infos:
        by_weights = {i.weights: i for i in infos}
        options = list(by_weights)
        tcpa_options = [w for w in options if by_weights[w].tcpa_family] or options
        if st.session_state.get(TCPA_KEY) not in tcpa_options:
            default = default_choice(infos, tcpa=True)
            st.session_state[TCPA_KEY] = options[default] if default is not None else tcpa_options[0]
        if st.session_state.get(BASELINE_KEY) not in (NO_BASELINE, *by_weights):
            default = default_choice(infos, tcpa=False)
            st.session_state[BASELINE_KEY] = options[default] if default is not None else NO_BASELINE
        tcpa = st.selectbox("TCPA model", tcpa_options, key=TCPA_KEY, help="TCPA-family checkpoints (with prompt "
                            "pools); when none is listed, every checkpoint", format_func=lambda w: by_weights[w].title)
        baseline = st.selectbox("Baseline model", [NO_BASELINE, *options], key=BASELINE_KEY,
                                format_func=lambda w: by_weights[w].title if w else "(none)")
        choice.tcpa = by_weights[tcpa]
        choice.baseline = by_weights.get(baseline)
    st.text_input("Other checkpoint (path)", key=PATH_INPUT,
                  placeholder="checkpoint folder, .safetensors or train --out folder")
    st.button("Add checkpoint", key="add_checkpoint", on_click=_add_checkpoint)
    st.caption(f"Listed from {demo_dir}")
    return choice


def model_summaries(models: Sequence[tuple[str, DashboardModel | None]]) -> None:
    """One line per loaded model: method, trainable parameters and validation accuracy (details: Models view)."""
    lines = []
    for role, loaded in models:
        if loaded is None:
            continue
        accuracy = (loaded.info.meta.get("metrics") or {}).get("val_acc")
        accuracy_text = f", val accuracy {100 * accuracy:.1f} %" if isinstance(accuracy, int | float) else ""
        lines.append(f"{role}: {loaded.label}, {loaded.counts['trainable']:,} trainable parameters{accuracy_text}")
    if lines:
        st.caption("  \n".join(lines))


def image_source(dataset_size: int | None) -> tuple[str, int, object | None]:
    """``(source, test index, uploaded file)``; ``source`` is ``"test"`` or ``"upload"``."""
    st.markdown("### Image")
    options = ["test", "upload"] if dataset_size else ["upload"]
    if st.session_state.get("image_source") not in options:
        st.session_state["image_source"] = options[0]
    source = st.radio("Source", options, key="image_source", horizontal=True,
                      format_func=lambda s: "test set" if s == "test" else "upload")
    index, upload = 0, None
    if source == "test" and dataset_size:
        index = int(st.number_input(f"Test image index (0-{dataset_size - 1})", min_value=0,
                                    max_value=dataset_size - 1, step=1, key="image_index"))
    else:
        generation = int(st.session_state.get(UPLOAD_GEN, 0))
        key = "image_upload" if not generation else f"image_upload_{generation}"
        upload = st.file_uploader("Image file", type=UPLOAD_TYPES, key=key,
                                  help="It is resized (aspect ratio not kept) to the model's input size.")
    return source, index, upload
