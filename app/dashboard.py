"""Entry point of the tcpa-viz dashboard.

Run ``tcpa-viz app`` or ``streamlit run app/dashboard.py [-- --demo-dir DIR --checkpoint PATH ...]``.
Without arguments the checkpoints under ``demo_out/`` (written by ``make demo``) are listed; the
environment variables ``TCPA_VIZ_DEMO_DIR`` and ``TCPA_VIZ_CHECKPOINTS`` (paths separated by the OS path
separator) do the same as the options. ``TCPA_VIZ_THREADS`` sets the CPU threads of the server (default 1).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from app.loading import DashboardModel, PreparedImage
    from app.sidebar import ModelChoice

# Streamlit renders bare string expressions of this script ("magic"), so notes here are comments.
THREADS_ENV = "TCPA_VIZ_THREADS"  # CPU threads of the dashboard process (default 1)
UPLOAD_ERROR = "upload_error"  # message of the last rejected upload, shown once after the uploader is cleared
HIDE_CHROME = "<style>[data-testid='stAppDeployButton'] {display: none;}</style>"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options given after ``--`` on the ``streamlit run`` command line."""
    parser = argparse.ArgumentParser(prog="dashboard.py", description="tcpa-viz dashboard")
    parser.add_argument("--demo-dir", default=None, help="folder whose checkpoints are listed (default demo_out)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                        help="an extra checkpoint to list (repeatable)")
    args, _ = parser.parse_known_args(argv)
    return args


def script_args() -> argparse.Namespace:
    """Parsed options when this file is the running script (not under a test runner's argv)."""
    if sys.argv and Path(sys.argv[0]).name == Path(__file__).name:
        return parse_args(sys.argv[1:])
    return parse_args([])


def limit_threads() -> None:
    """Apply the process thread policy (``tcpa_core.threads.configure_threads``) with ``$TCPA_VIZ_THREADS``
    threads, one by default, on every run of the script.

    The dashboard's forward passes are small and already cached; on a busy 2-core machine OpenMP worker
    threads that wait for a core make a batch of 32 demo images about ten times slower with 2 threads than
    with 1, so one thread is the predictable choice. It is applied on every run, not once: Streamlit runs the
    script in a new thread each time and OpenMP's thread limit (scikit-learn's t-SNE) holds per thread.
    """
    from tcpa_core.threads import configure_threads

    configure_threads(max(1, int(os.environ.get(THREADS_ENV) or 1)))


def attempt(what: str, func: Any, *args: Any) -> tuple[Any, str | None]:
    """``(func(*args), None)``, or ``(None, message)`` when it fails; the page shows the message.

    Every exception is caught: a user-supplied checkpoint or image that breaks a loader in an unforeseen
    way must produce a message in the page, not a crashed session.
    """
    from tcpa_core import TCPAError

    try:
        return func(*args), None
    except TCPAError as exc:
        return None, f"{what}: {exc}"
    except Exception as exc:
        return None, f"{what} failed ({type(exc).__name__}: {exc})"


def load_models(choice: ModelChoice) -> tuple[DashboardModel | None, DashboardModel | None]:
    """Load the chosen TCPA and baseline checkpoints; problems become messages in the page.

    Returns ``(tcpa, baseline)`` as ``DashboardModel`` or ``None``; the baseline is dropped when it cannot be
    compared with the TCPA model (another backbone or input size).
    """
    import dataclasses

    import streamlit as st

    from app import loading
    from tcpa_core.checkpoint import check_same_backbone
    from tcpa_core.errors import BackboneMismatchError

    def load(info: loading.CheckpointInfo) -> loading.DashboardModel:
        with st.spinner(f"Loading {info.label}..."):
            return dataclasses.replace(loading.load_model(info.weights, info.mtime), info=info)

    tcpa, error = attempt(f"Could not load {choice.tcpa.label}", load, choice.tcpa)
    if error:
        st.error(error)
    baseline = None
    if choice.baseline is not None and choice.baseline.weights != choice.tcpa.weights:
        baseline, error = attempt(f"Could not load {choice.baseline.label}", load, choice.baseline)
        if error:
            st.error(error)
    if tcpa is not None and baseline is not None:
        try:
            check_same_backbone(baseline, tcpa)
        except BackboneMismatchError as exc:
            st.error(f"Cannot compare these models: {exc} The baseline is left out.")
            baseline = None
    return tcpa, baseline


def current_image(tcpa: DashboardModel, dataset: Dataset | None, data_key: str) -> PreparedImage | None:
    """The image chosen in the sidebar (a test image or a validated upload), or ``None`` when there is none.

    A file that cannot be used gives an error message and the test image is shown instead.
    """
    import streamlit as st

    from app import loading, sidebar

    with st.sidebar:
        source, index, upload = sidebar.image_source(len(dataset) if dataset is not None else None)
    if st.session_state.get(UPLOAD_ERROR):
        st.error(st.session_state.pop(UPLOAD_ERROR))
    if source == "upload" and upload is not None:
        data = upload.getvalue()
        image, error = attempt(f"Cannot use the uploaded file {upload.name!r}", loading.upload_image,
                               loading.upload_digest(data), upload.name, tcpa.data_key, data)
        if error:
            st.session_state[UPLOAD_ERROR] = error + (" Showing a test image instead." if dataset is not None else "")
            st.session_state[sidebar.UPLOAD_GEN] = st.session_state.get(sidebar.UPLOAD_GEN, 0) + 1
            st.rerun()
        else:
            if image.notes:
                st.warning(f"{upload.name}: " + "; ".join(image.notes) + ".")
            return image
    elif source == "upload" and dataset is not None:
        st.info("Upload an image in the sidebar; showing a test image meanwhile.")
    if dataset is None:
        st.info("Upload an image in the sidebar to start.")
        return None
    return loading.dataset_image(dataset, data_key, index, tcpa.data_config)


def main() -> None:
    """Draw the page (Streamlit runs this on every interaction)."""
    import json

    import streamlit as st

    from app import loading, sidebar, state
    from app.views import ImageContext, ImagePageContext, PageContext, get_view
    from tcpa_viz.models import read_demo_summary

    st.set_page_config(page_title="tcpa-viz dashboard", layout="wide")
    st.html(HIDE_CHROME)
    limit_threads()
    args = script_args()
    demo_dir = loading.resolve_demo_dir(args.demo_dir)
    with st.sidebar:
        st.title("tcpa-viz")
        view = get_view(sidebar.view_picker())
        choice = sidebar.model_pickers(demo_dir, loading.extra_checkpoint_paths(args.checkpoint))
        if choice.problems:
            with st.expander(f"{len(choice.problems)} unreadable checkpoint(s)"):
                for problem in choice.problems:
                    st.caption(problem)
    for error in choice.errors:
        st.error(error)
    if choice.tcpa is None:
        st.warning(
            f"No checkpoints found in {demo_dir}. Run `make demo` (or `tcpa-viz demo`) to train the demo models, "
            "or enter the path of a checkpoint under 'Other checkpoint' in the sidebar."
        )
        return
    summary = read_demo_summary(demo_dir) or {}
    tcpa, baseline = load_models(choice)
    with st.sidebar:
        sidebar.model_summaries([("TCPA", tcpa), ("Baseline", baseline)])
    entries = [("TCPA", choice.tcpa, tcpa)]
    if choice.baseline is not None:
        entries.insert(0, ("Baseline", choice.baseline, baseline))
    if not view.needs_image or tcpa is None:
        if view.needs_image:
            view = get_view("models")
        view.render(PageContext(tcpa=tcpa, baseline=baseline, entries=entries, summary=summary, dataset=None,
                                data_key="", demo_dir=demo_dir))
        return

    spec_json = json.dumps(loading.dataset_spec(tcpa), sort_keys=True)
    dataset, error = attempt("Could not open the test set", loading.open_dataset, spec_json, tcpa.data_key)
    if error:
        st.error(f"{error} Upload an image instead.")
    data_key = f"{spec_json}|{tcpa.data_key}"
    state.ensure(state.Scope(
        model=tcpa.info.label, grid=(int(tcpa.grid_size[0]), int(tcpa.grid_size[1])), depth=tcpa.depth,
        heads=min(lm.num_heads for lm in (tcpa, baseline) if lm is not None), classes=tcpa.model.num_classes,
        dataset=spec_json, images=len(dataset) if dataset is not None else None))
    state.show_notes()
    image = current_image(tcpa, dataset, data_key)
    if image is None:
        return
    if not view.needs_capture:
        view.render(ImagePageContext(tcpa=tcpa, baseline=baseline, entries=entries, summary=summary, dataset=dataset,
                                     data_key=data_key, image=image, demo_dir=demo_dir))
        return

    captures = []
    with st.spinner("Running the models on the image..."):
        for lm in (tcpa, baseline):
            cap, error = (None, None) if lm is None else attempt(
                f"Running {lm.info.label} on {image.name}", loading.capture_image, lm.key, image.key, lm, image)
            if error:
                st.error(error)
            captures.append(cap)
    if captures[0] is None:
        return
    ctx = ImageContext(tcpa=tcpa, baseline=baseline if captures[1] else None, entries=entries, summary=summary,
                       dataset=dataset, data_key=data_key, image=image, tcpa_capture=captures[0],
                       baseline_capture=captures[1], demo_dir=demo_dir)
    predictions = [image.name]
    names = tcpa.class_names
    if image.label is not None:
        predictions.append(f"label {names[image.label] if image.label < len(names) else image.label}")
    for role, lm, cap in ctx.models():
        top = int(cap.probs.argmax())
        predictions.append(f"{role} ({lm.info.label}) predicts {lm.class_names[top]} ({cap.probs[top]:.2f})")
    st.caption(" · ".join(predictions))

    view.render(ctx)


if __name__ == "__main__":
    main()
