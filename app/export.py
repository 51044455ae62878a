"""Export buttons: PNG (matplotlib twin of the figure), HTML (the interactive plotly figure) and CSV.

Files are produced only when a button is pressed (deferred ``data`` callables), so drawing a view never
pays for an export.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import plotly.graph_objects as go
import streamlit as st
from matplotlib.figure import Figure


@dataclass
class ExportFigure:
    """A figure of the current view: the plotly figure shown (or a builder of it, for a view that shows the
    figure another way) and a builder of its matplotlib twin."""

    name: str
    plotly: go.Figure | Callable[[], go.Figure]
    matplotlib: Callable[[], Figure]

    def plotly_figure(self) -> go.Figure:
        """The plotly figure (built now when only its builder was given)."""
        return self.plotly if isinstance(self.plotly, go.Figure) else self.plotly()


def slug(text: str) -> str:
    """File-name friendly version of ``text``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "figure"


def png_bytes(build: Callable[[], Figure], dpi: int = 150) -> bytes:
    """Render the matplotlib figure returned by ``build`` to PNG bytes."""
    buffer = io.BytesIO()
    build().savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def html_text(fig: go.Figure) -> str:
    """Self-contained HTML of a plotly figure (plotly.js embedded, works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def export_bar(figures: list[ExportFigure], key: str, stem: str,
               csv: dict[str, tuple[str, Callable[[], bytes]]] | None = None, heading: str = "Export") -> None:
    """A row of download buttons for one of ``figures`` (chosen in a selector) and for the ``csv`` tables
    (button label -> (file name suffix, builder)), under the title ``heading``."""
    st.markdown(f"##### {heading}")
    if not figures and not csv:
        st.caption("Nothing to export in this view.")
        return
    columns = st.columns([2.4, 1, 1, *([1.5] * len(csv or {}))], vertical_alignment="bottom")
    if figures:
        names = [f.name for f in figures]
        if st.session_state.get(f"{key}_figure") not in names:
            st.session_state[f"{key}_figure"] = names[0]
        chosen = columns[0].selectbox("Figure", names, key=f"{key}_figure", persist_state="page")
        figure = figures[names.index(chosen)] if chosen in names else figures[0]
        base = f"{stem}_{slug(figure.name)}"
        columns[1].download_button("PNG", data=lambda: png_bytes(figure.matplotlib), file_name=f"{base}.png",
                                   mime="image/png", key=f"{key}_png", on_click="ignore",
                                   icon=":material/image:")
        columns[2].download_button("HTML", data=lambda: html_text(figure.plotly_figure()), file_name=f"{base}.html",
                                   mime="text/html", key=f"{key}_html", on_click="ignore",
                                   icon=":material/code:")
    for column, (label, (suffix, build)) in zip(columns[3:], (csv or {}).items(), strict=True):
        column.download_button(label, data=build, file_name=f"{stem}_{slug(suffix)}.csv", mime="text/csv",
                               key=f"{key}_csv_{slug(suffix)}", on_click="ignore", icon=":material/table:")
