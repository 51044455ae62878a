"""Colour helpers shared by the matplotlib and plotly versions of each plot."""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib import colors as mcolors

from .errors import AnalysisArgumentError

GROUP_COLORS: dict[str, str] = {
    "prefix": "#444444",
    "cls_prompts": "#d62728",
    "image_prompts": "#1f77b4",
    "prompts": "#9467bd",
    "patches": "#2ca02c",
}
"""Colour of each token group in bar charts and separators."""


def get_cmap(name: str) -> mcolors.Colormap:
    """The matplotlib colormap called ``name`` (raises ``ValueError`` listing the problem otherwise)."""
    try:
        return matplotlib.colormaps[name]
    except KeyError as err:
        raise AnalysisArgumentError(
            f"unknown matplotlib colormap {name!r}; try 'jet', 'viridis', 'inferno', 'turbo'"
        ) from err


def plotly_colorscale(name: str, n: int = 32) -> list[list[float | str]]:
    """A plotly colorscale sampled from the matplotlib colormap ``name`` so both back-ends match."""
    cmap = get_cmap(name)
    stops = np.linspace(0.0, 1.0, n)
    scale: list[list[float | str]] = []
    for t in stops:
        r, g, b, _ = cmap(float(t))
        scale.append([float(t), f"rgb({int(round(r * 255))},{int(round(g * 255))},{int(round(b * 255))})"])
    return scale


def categorical_colors(n: int) -> list[str]:
    """``n`` distinct hex colours (tab10/tab20, then evenly spaced hues of a cyclic map for more)."""
    if n <= 10:
        cmap, count = matplotlib.colormaps["tab10"], 10
    elif n <= 20:
        cmap, count = matplotlib.colormaps["tab20"], 20
    else:
        cmap, count = matplotlib.colormaps["hsv"], n + 1
    return [mcolors.to_hex(cmap(i / count if count > 20 else i)) for i in range(n)]
