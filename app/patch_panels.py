"""Clickable patch pictures: a row of same-sized images of the patch grid (the image itself, or a map blended
into it) with the selected patch boxed, optional grid lines and colour bars; hovering a panel names the patch
and its value, a click picks the patch.

It is a small Streamlit component (``st.components.v2``) rather than a plotly chart because of what a click
costs in the browser. Streamlit gives a plotly chart whose figure changed a new element id, so the chart is
taken down and built again (plotly's defaults and config copy, then two draws), 0.2-0.3 s per chart on 2 cores
at ViT-B size. This component keeps its element (its id is its key): new data replaces the pictures in place
once they are decoded. Plotly versions of the same pictures remain the HTML exports.

A click sends the trigger ``patch`` with ``{"row", "col", "h", "w"}`` (the grid the panels were drawn for, so a
stale click can be refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import streamlit as st

from app import state
from app.figures import ColourBar, PatchPanel, png_data_uri

_CSS = """
.tcpa-pp { font-size: 0.9rem; }
.tcpa-pp-title { font-weight: 600; margin-bottom: 0.3rem; }
.tcpa-pp-row { display: flex; gap: 18px; align-items: flex-end; }
.tcpa-pp-panel { display: flex; flex-direction: column; gap: 0.2rem; }
.tcpa-pp-name { text-align: center; }
.tcpa-pp-frame { position: relative; cursor: crosshair; }
.tcpa-pp-frame img { display: block; width: 100%; height: 100%; image-rendering: pixelated; user-select: none; }
.tcpa-pp-lines { position: absolute; inset: 0; pointer-events: none; }
.tcpa-pp-box { position: absolute; box-sizing: border-box; border: 3px solid; pointer-events: none; }
.tcpa-pp-bar { display: flex; flex: 0 0 auto; gap: 0.3rem; align-items: stretch; font-size: 0.75rem; }
.tcpa-pp-ramp { flex: 0 0 12px; }
.tcpa-pp-ticks { display: flex; flex-direction: column; justify-content: space-between; }
.tcpa-pp-readout { min-height: 1.4em; margin-top: 0.3rem; opacity: 0.8; }
"""

_JS = """
const BAR_PX = 80, GAP_PX = 18;
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
};

export default function ({ parentElement, data, setTriggerValue }) {
  let root = parentElement.querySelector(".tcpa-pp");
  if (!root) {
    root = el("div", "tcpa-pp");
    parentElement.appendChild(root);
  }
  const [h, w] = data.grid;
  const room = (parentElement.clientWidth || data.size[0] * data.panels.length) - BAR_PX * data.bars.length
    - GAP_PX * (data.panels.length + data.bars.length - 1);
  const width = Math.max(40, Math.min(data.size[0], room / data.panels.length));
  const height = (width * data.size[1]) / data.size[0];
  const turn = (root.tcpaTurn = (root.tcpaTurn || 0) + 1);
  root.dataset.pending = "1";
  const readout = el("div", "tcpa-pp-readout", data.hint);
  const row = el("div", "tcpa-pp-row");
  const decoded = [];
  data.panels.forEach((panel, i) => {
    const cell = el("div", "tcpa-pp-panel");
    const frame = el("div", "tcpa-pp-frame");
    frame.style.width = width + "px";
    frame.style.height = height + "px";
    const img = new Image();
    img.src = panel.src;
    img.draggable = false;
    decoded.push(img.decode().catch(() => null));
    frame.append(img);
    if (data.lines) {
      const lines = el("div", "tcpa-pp-lines");
      const line = "rgba(255,255,255,0.55) 0 1px, transparent 1px";
      lines.style.backgroundImage = `linear-gradient(to right, ${line}), linear-gradient(to bottom, ${line})`;
      lines.style.backgroundSize = `${100 / w}% 100%, 100% ${100 / h}%`;
      frame.append(lines);
    }
    if (data.selected) {
      const box = el("div", "tcpa-pp-box");
      Object.assign(box.style, { borderColor: data.box_colour, left: `${(100 * data.selected[1]) / w}%`,
                                 top: `${(100 * data.selected[0]) / h}%`,
                                 width: `${100 / w}%`, height: `${100 / h}%` });
      frame.append(box);
    }
    const at = (event) => {
      const rect = frame.getBoundingClientRect();
      const col = Math.min(w - 1, Math.max(0, Math.floor(((event.clientX - rect.left) / rect.width) * w)));
      const r = Math.min(h - 1, Math.max(0, Math.floor(((event.clientY - rect.top) / rect.height) * h)));
      return [r, col];
    };
    frame.onmousemove = (event) => {
      const [r, col] = at(event);
      const value = panel.values ? `: ${panel.values[r * w + col]}` : "";
      readout.textContent = `${panel.name ? panel.name + ", " : ""}patch (${r}, ${col})${value}`;
    };
    frame.onmouseleave = () => { readout.textContent = data.hint; };
    frame.onclick = (event) => {
      const [r, col] = at(event);
      setTriggerValue("patch", { row: r, col, h, w });
    };
    if (panel.name) cell.append(el("div", "tcpa-pp-name", panel.name));
    cell.append(frame);
    row.append(cell);
    for (const bar of data.bars.filter((b) => b.after === i)) {
      const box = el("div", "tcpa-pp-bar");
      box.style.height = height + "px";
      const ramp = el("div", "tcpa-pp-ramp");
      ramp.style.background = bar.gradient;
      const ticks = el("div", "tcpa-pp-ticks");
      bar.ticks.forEach((t) => ticks.append(el("span", "", t)));
      box.append(ramp, ticks, el("span", "", bar.label));
      box.lastChild.style.writingMode = "vertical-rl";
      row.append(box);
    }
  });
  Promise.all(decoded).then(() => {
    if (turn !== root.tcpaTurn) return;
    const parts = data.title ? [el("div", "tcpa-pp-title", data.title), row, readout] : [row, readout];
    root.replaceChildren(...parts);
    root.dataset.revision = data.revision;
    root.dataset.grid = `${h}x${w}`;
    delete root.dataset.pending;
  });
}
"""

_COMPONENT = st.components.v2.component("patch_panels", css=_CSS, js=_JS, isolate_styles=False)


@cache
def _gradient(cmap: str, stops: int = 16) -> str:
    """CSS gradient (bottom to top) of the matplotlib colormap ``cmap``."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    colours = colormaps[cmap](np.linspace(0.0, 1.0, stops))
    return f"linear-gradient(to top, {', '.join(to_hex(c) for c in colours)})"


def panel_data(panels: Sequence[PatchPanel], grid: tuple[int, int], selected: tuple[int, int] | None,
               bars: Sequence[ColourBar] = (), title: str = "", hint: str = "", lines: bool = False,
               height: int = 300, box_colour: str = "#00e5ff", revision: int = 0) -> dict[str, Any]:
    """What the component is sent: every picture as a PNG data URI, the patch values as formatted text
    (row-major), the colour bars' gradients and their top, middle and bottom ticks, and the largest panel
    size in pixels (``height`` high, as wide as the grid's aspect asks; the browser shrinks the panels when the
    row would not fit the page width). ``lines`` draws the patch grid; the selected
    patch is boxed in ``box_colour``; ``revision`` counts the clicks handled (browser tests read it)."""
    h, w = grid
    sent = []
    for panel in panels:
        values = None if panel.values is None else [format(float(v), panel.value_format)
                                                    for v in np.asarray(panel.values).reshape(-1)]
        sent.append({"name": panel.name, "src": png_data_uri(panel.picture), "values": values})
    return {
        "panels": sent, "grid": [h, w], "selected": list(selected) if selected is not None else None,
        "bars": [{"after": b.after, "label": b.label, "gradient": _gradient(b.cmap),
                  "ticks": [format(b.hi, ".3g"), format((b.lo + b.hi) / 2, ".3g"), format(b.lo, ".3g")]}
                 for b in bars],
        "title": title, "hint": hint, "lines": lines, "size": [round(height * w / h), height],
        "box_colour": box_colour, "revision": revision,
    }


def patch_panels(key: str, panels: Sequence[PatchPanel], grid: tuple[int, int], selected: tuple[int, int] | None,
                 **options: Any) -> None:
    """Draw the panels (``options`` as in :func:`panel_data`); a click on any of them makes its patch the
    shared one (:func:`app.state.on_patch_event`)."""
    data = panel_data(panels, grid, selected, revision=state.chart_meta(key)["revision"], **options)
    _COMPONENT(key=key, data=data, on_patch_change=lambda: state.on_patch_event(key, grid))
