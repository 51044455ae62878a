"""The paper's figures, regenerated for two checkpoints (a baseline and TCPA): one module per figure.

- :func:`figure1`: attention of the CLS token, an object patch and a background patch (overlay + prompt
  bars), and training time per epoch vs accuracy;
- :func:`figure3`: 3D rows and 2D matrix of the last layer's attention;
- :func:`figure5`: t-SNE of the test features with cluster metrics (``tsne_metrics.json``);
- :func:`figure6`: t-SNE over several datasets (the demo: its test digits at three clutter levels);
- :func:`rank_report`: attention rank per layer (``rank.csv``, ``rank.json``, plot).

Each writes a PNG (matplotlib) and an HTML (plotly; the HTML files of one folder share one offline copy of
plotly.js) and returns the written paths. :data:`FIGURES` lists them (the choices of ``tcpa-viz figure``);
:func:`run_all` writes all of them for a ``tcpa-viz demo`` folder.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcpa_core.data import limit_samples

from ..errors import FigureArgumentError
from ..models import LoadedModel, load_run
from .clutter import CLUTTER_LEVELS, DigitsAtClutterLevel
from .common import (
    DEFAULT_DEMO_DIR,
    FIGURES_SUBDIR,
    DataSpec,
    FigureContext,
    demo_checkpoints,
    figure_context,
    load_pair,
)
from .figure1 import figure1
from .figure3 import figure3
from .figure5 import DEFAULT_MAX_SAMPLES, TSNEMemo, figure5
from .figure6 import CLUTTER_SUBJECT, TSNERow, clutter_rows, figure6, rows_from_args
from .rank_report import RANK_COLUMNS, rank_report
from .registry import FIGURES, FigureSpec


def run_all(demo_dir: str | Path = DEFAULT_DEMO_DIR, out_dir: str | Path | None = None,
            log: Callable[[str], None] | None = None, max_samples: int | None = DEFAULT_MAX_SAMPLES,
            ) -> dict[str, list[Path]]:
    """Write every figure of :data:`FIGURES` and the rank report for the checkpoints of a demo folder.

    The two checkpoints are loaded once and the t-SNE of the test split is shared by Fig. 5 and Fig. 6.
    ``out_dir`` defaults to ``<demo_dir>/figures``; ``log`` receives one line per step (with its seconds);
    ``max_samples`` caps the images per t-SNE. The data is the test split of the demo's dataset, with the
    demo's own ``--max-samples`` cap when it had one.
    Returns ``{"figure1": paths, "figure3": ..., "figure5": ..., "figure6": ..., "rank": ...}``.
    """
    out = Path(out_dir) if out_dir is not None else Path(demo_dir) / FIGURES_SUBDIR
    baseline, tcpa = load_pair(None, None, demo_dir)
    memo: TSNEMemo = {}
    steps: dict[str, Callable[[], list[Path]]] = {}
    for spec in FIGURES.values():
        kwargs: dict[str, Any] = {"out_dir": out, "demo_dir": demo_dir}
        if spec.several_datasets:
            kwargs.update(rows=clutter_rows(baseline, tcpa), subject=CLUTTER_SUBJECT)
        else:
            kwargs.update(baseline=baseline, tcpa=tcpa)
        if "max_samples" in spec.options:
            kwargs.update(max_samples=max_samples, memo=memo)
        steps[spec.stem] = functools.partial(spec.func, **kwargs)
    steps["rank"] = lambda: rank_report(baseline, tcpa, out, demo_dir=demo_dir)
    written: dict[str, list[Path]] = {}
    for name, step in steps.items():
        start = time.perf_counter()
        written[name] = step()
        if log is not None:
            log(f"{name}: {', '.join(p.name for p in written[name])} ({time.perf_counter() - start:.1f} s)")
    return written


__all__ = [
    "CLUTTER_LEVELS", "DEFAULT_DEMO_DIR", "FIGURES", "FIGURES_SUBDIR", "RANK_COLUMNS", "DataSpec",
    "DigitsAtClutterLevel", "FigureArgumentError", "FigureContext", "FigureSpec",
    "LoadedModel", "TSNERow", "clutter_rows", "demo_checkpoints", "figure1", "figure3", "figure5", "figure6",
    "figure_context", "limit_samples", "load_pair", "load_run", "rank_report", "rows_from_args", "run_all",
]
