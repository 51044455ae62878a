"""The paper figures as a registry: the one list that ``tcpa-viz figure N``, ``tcpa-viz demo`` and ``scripts/``
read.

A :class:`FigureSpec` names the figure function and the figure options it takes; every function computes its
data once (:func:`tcpa_viz.figures.common.figure_context`: the two models, the data and the sample) and
hands it to its matplotlib and its plotly renderer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .figure1 import figure1
from .figure3 import figure3
from .figure5 import figure5
from .figure6 import figure6


@dataclass(frozen=True)
class FigureSpec:
    """One paper figure.

    Attributes:
        number: the figure's number in the paper (``tcpa-viz figure NUMBER``).
        stem: output file name without extension (``<stem>.png``, ``<stem>.html``).
        summary: one line saying what the figure shows.
        func: the function that writes it and returns the written paths.
        options: the keyword options of ``func`` that ``tcpa-viz figure`` passes from its arguments of the same
            name (besides the checkpoints, data and folders).
        several_datasets: True when ``func`` takes rows of (dataset, checkpoints) instead of one pair.
    """

    number: str
    stem: str
    summary: str
    func: Callable[..., list[Path]]
    options: tuple[str, ...] = ()
    several_datasets: bool = False


FIGURES: dict[str, FigureSpec] = {
    spec.number: spec
    for spec in (
        FigureSpec("1", "figure1", "attention of the CLS token, an object patch and a background patch, and time "
                   "per epoch vs accuracy", figure1, ("index", "layer", "summary")),
        FigureSpec("3", "figure3", "3D/2D last-layer attention", figure3, ("index", "layer")),
        FigureSpec("5", "figure5", "t-SNE of the test features (+ tsne_metrics.json)", figure5,
                   ("max_samples", "perplexity", "seed")),
        FigureSpec("6", "figure6", "t-SNE over several datasets (the demo: its test digits at three clutter levels)",
                   figure6, ("max_samples", "perplexity", "seed"), several_datasets=True),
    )
}
"""Figure number -> :class:`FigureSpec`, in paper order."""
