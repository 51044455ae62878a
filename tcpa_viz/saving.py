"""Write matplotlib or plotly figures to disk, choosing the format from the file extension.

Plotly HTML files written into one folder share one offline copy of plotly.js beside them
(``plotly-<version>.min.js``, written once per folder and plotly version) instead of embedding its ~4.7 MB
in each file; the HTML references it by a relative path, so a folder still opens offline as long as it is
copied whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from tcpa_core.checkpoint import atomic_write
from tcpa_core.errors import TCPAError

MATPLOTLIB_FORMATS: tuple[str, ...] = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps")
PLOTLY_FORMATS: tuple[str, ...] = (".html", ".json")


class FigureFormatError(TCPAError, ValueError):
    """A figure cannot be written in the format its file extension asks for."""


class NotAFigureError(TCPAError, TypeError):
    """Something that is neither a matplotlib nor a plotly figure was given to :func:`save_figure`."""


def is_plotly_figure(fig: Any) -> bool:
    """True for a ``plotly.graph_objects.Figure`` (checked without importing plotly)."""
    return type(fig).__module__.startswith("plotly.") and hasattr(fig, "write_html")


def is_matplotlib_figure(fig: Any) -> bool:
    """True for a ``matplotlib.figure.Figure``."""
    from matplotlib.figure import Figure

    return isinstance(fig, Figure)


def plotlyjs_name() -> str:
    """File name of the shared plotly.js bundle for the installed plotly version."""
    import plotly

    return f"plotly-{plotly.__version__}.min.js"


def write_plotlyjs(folder: str | Path) -> Path:
    """Write the plotly.js bundle of the installed plotly into ``folder`` unless it is already there; returns it."""
    from plotly.offline import get_plotlyjs

    path = Path(folder) / plotlyjs_name()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        data = get_plotlyjs().encode("utf-8")
        atomic_write(path, lambda handle: handle.write(data))
    return path


def save_figure(fig: Any, path: str | Path, dpi: int = 150, plotlyjs: Literal["shared", "inline"] = "shared"
                ) -> Path:
    """Write ``fig`` to ``path`` by extension and return the path (parent folders are created).

    matplotlib figures: ``.png``, ``.pdf``, ``.svg``, ``.jpg``/``.jpeg``, ``.eps``, drawn with the Agg
    family of renderers whatever the interactive backend is (``dpi`` applies to raster formats).
    plotly figures: ``.html`` or ``.json``. The HTML works offline: ``plotlyjs="shared"`` refers to the one copy
    of plotly.js that :func:`write_plotlyjs` puts beside it, ``"inline"`` embeds plotly.js. Static images
    from plotly need the kaleido package, which this project does not ship: ask for ``.html`` or use the
    matplotlib version of the plot for PNG/PDF/SVG.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if is_plotly_figure(fig):
        if ext not in PLOTLY_FORMATS:
            raise FigureFormatError(
                f"cannot write a plotly figure as {ext or 'a file without extension'} ({path.name}): static "
                "plotly export needs kaleido, which is not installed. Save it as .html (interactive, works "
                "offline) or use the matplotlib version of this plot for PNG/PDF/SVG."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        if ext == ".html":
            script: bool | str = write_plotlyjs(path.parent).name if plotlyjs == "shared" else True
            fig.write_html(str(path), include_plotlyjs=script, full_html=True)
        else:
            fig.write_json(str(path))
        return path
    if is_matplotlib_figure(fig):
        if ext not in MATPLOTLIB_FORMATS:
            raise FigureFormatError(
                f"cannot write a matplotlib figure as {ext or 'a file without extension'} ({path.name}); "
                f"use one of {', '.join(MATPLOTLIB_FORMATS)}, or the plotly version of the plot for .html."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(str(path), dpi=dpi, bbox_inches="tight")
        return path
    raise NotAFigureError(f"save_figure takes a matplotlib or plotly figure, got {type(fig).__name__}; pass the "
                          "figure object that a plot_* function returned.")
