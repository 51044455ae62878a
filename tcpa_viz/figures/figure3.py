"""Paper Fig. 3: 3D and 2D views of one image's last-layer attention, baseline vs TCPA.

Left (3D): selected query rows (CLS, the object and background patches of Fig. 1 and evenly spaced
patch rows) against every key index ``[prefix | prompt columns | patches]``, one line per row. Right (2D):
the whole head-averaged ``[query, key]`` matrix with a colour bar. TCPA is shown after its mask
(unselected prompt columns are exactly zero, rows sum to less than one). Both models share the z range
and the colour scale (square-root scale so that small weights stay visible) so they compare directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from ..colors import GROUP_COLORS, get_cmap
from ..heatmap import attention_matrix, group_ticks, plot_attention_heatmap_matplotlib, plot_attention_heatmap_plotly
from ..surface import default_surface_queries, plot_attention_surface_plotly, surface_rows
from ..tokens import GROUP_TITLES, nonempty_groups
from .common import (
    DEFAULT_DEMO_DIR,
    FIGURES_SUBDIR,
    DataSpec,
    FigureArgumentError,
    LoadedModel,
    ModelInputs,
    adaptive_threads,
    capture_attention,
    choose_sample,
    load_pair,
    query_patches,
    resolve_data,
    write_figures,
)

NUM_EXTRA_PATCH_ROWS = 6
"""Evenly spaced patch rows shown in the 3D view besides CLS and the two Fig. 1 patches."""


def surface_queries(layout: Any, object_patch: tuple[int, int], background_patch: tuple[int, int]) -> list[int]:
    """Query rows of the 3D view: prefix tokens, the object and background patches, evenly spaced patches."""
    rows = default_surface_queries(layout, NUM_EXTRA_PATCH_ROWS)
    rows += [layout.patch_query_index(*object_patch), layout.patch_query_index(*background_patch)]
    return sorted(set(rows))


def _draw_rows_3d(ax: Any, z: np.ndarray, labels: Sequence[str], layout: Any, zmax: float, title: str) -> None:
    x = np.arange(z.shape[1])
    colours = get_cmap("viridis")(np.linspace(0.0, 0.9, z.shape[0]))
    for r in range(z.shape[0]):
        ax.plot(x, np.full_like(x, r), z[r], color=colours[r], linewidth=0.9)
    for name, s in nonempty_groups(layout.key_slices()):
        ax.plot([s.start - 0.5, s.stop - 0.5], [-1.0, -1.0], [0.0, 0.0], color=GROUP_COLORS[name], linewidth=4.0,
                label=GROUP_TITLES[name])
    for b in group_ticks(layout.key_slices())[2]:
        ax.plot([b, b], [0, z.shape[0] - 1], [0, 0], color="grey", linestyle="--", linewidth=0.7)
    ax.legend(loc="upper left", fontsize="x-small", title="key groups", title_fontsize="x-small")
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel("key index", fontsize="small")
    ax.set_zlabel("attention", fontsize="small")
    ax.set_zlim(0.0, zmax)
    ax.tick_params(labelsize="x-small")
    ax.view_init(elev=30.0, azim=-58.0)
    ax.set_box_aspect((2.0, 1.3, 0.9), zoom=1.2)
    ax.set_title(title, fontsize="medium")


def figure3_matplotlib(panels: Sequence[tuple[str, dict[Any, Any], Any]], queries: Sequence[Sequence[int]],
                       title: str) -> Figure:
    """Static Fig. 3. ``panels``: ``(label, {layer: attention [1, H, Q, K]}, layout)`` per model."""
    fig = Figure(figsize=(15.0, 6.0 * len(panels)), layout="constrained")
    grid = fig.add_gridspec(len(panels), 2, width_ratios=[1.25, 1.0])
    mats = [attention_matrix(next(iter(a.values())), layout) for _, a, layout in panels]
    vmax = max(float(m.max()) for m in mats)
    rows = [surface_rows(m, layout, qs) for m, (_, _, layout), qs in zip(mats, panels, queries, strict=True)]
    zmax = 1.05 * max(float(z.max()) for z, _ in rows)
    for i, ((label, _, layout), m, (z, labels)) in enumerate(zip(panels, mats, rows, strict=True)):
        ax3 = fig.add_subplot(grid[i, 0], projection="3d")
        _draw_rows_3d(ax3, z, labels, layout, zmax, f"{label}: selected query rows x all keys")
        ax2 = fig.add_subplot(grid[i, 1])
        plot_attention_heatmap_matplotlib(m, layout, scale="sqrt", vmax=vmax, ax=ax2,
                                          title=f"{label}: attention matrix ({m.shape[0]} x {m.shape[1]})")
    fig.suptitle(title, fontsize="medium")
    return fig


def figure3_plotly(panels: Sequence[tuple[str, dict[Any, Any], Any]], queries: Sequence[Sequence[int]],
                   title: str) -> Any:
    """Interactive Fig. 3: a ``Surface`` of the selected rows and the heatmap per model."""
    from plotly.subplots import make_subplots

    n = len(panels)
    specs = [[{"type": "scene"}, {"type": "xy"}] for _ in panels]
    titles = [t for label, _, _ in panels for t in (f"{label}: selected query rows x all keys (3D)",
                                                    f"{label}: attention matrix (sqrt colour scale)")]
    fig = make_subplots(rows=n, cols=2, specs=specs, subplot_titles=titles, horizontal_spacing=0.16,
                        vertical_spacing=0.16 / max(n - 1, 1), column_widths=[0.5, 0.5])
    mats = [attention_matrix(next(iter(a.values())), layout) for _, a, layout in panels]
    cmax = float(np.sqrt(max(float(m.max()) for m in mats)))
    zmax = max(float(surface_rows(m, layout, qs)[0].max()) for m, (_, _, layout), qs in zip(mats, panels, queries,
                                                                                             strict=True))
    for i, ((_, _, layout), m, qs) in enumerate(zip(panels, mats, queries, strict=True)):
        surface = plot_attention_surface_plotly(m, layout, qs, kind="surface")
        heat = plot_attention_heatmap_plotly(m, layout, scale="sqrt")
        y_mid = 1.0 - (i + 0.5) / n
        for trace in surface.data:
            trace.update(cmin=0.0, cmax=zmax, colorbar=dict(x=0.42, y=y_mid, len=0.7 / n, title=dict(text="attention")))
            fig.add_trace(trace, row=i + 1, col=1)
        for trace in heat.data:
            trace.update(zmin=0.0, zmax=cmax, colorbar=dict(x=1.01, y=y_mid, len=0.7 / n))
            fig.add_trace(trace, row=i + 1, col=2)
        for shape in heat.layout.shapes:
            fig.add_shape(shape, row=i + 1, col=2)
        fig.update_xaxes(heat.layout.xaxis, row=i + 1, col=2)
        fig.update_yaxes(heat.layout.yaxis, row=i + 1, col=2)
        scene = fig.get_subplot(i + 1, 1)
        scene.update(surface.layout.scene.to_plotly_json())
        scene.zaxis.update(range=[0.0, 1.05 * zmax])
    fig.update_layout(title=dict(text=title.replace("\n", "<br>")), width=1300, height=620 * n, margin=dict(t=100))
    return fig


@adaptive_threads
def figure3(
    baseline: str | Path | LoadedModel | None = None,
    tcpa: str | Path | LoadedModel | None = None,
    out_dir: str | Path | None = None,
    data: DataSpec | Dataset | None = None,
    index: int | None = None,
    layer: int = -1,
    demo_dir: str | Path = DEFAULT_DEMO_DIR,
    stem: str = "figure3",
) -> list[Path]:
    """Write Fig. 3 as ``<stem>.png`` and ``<stem>.html``; returns the two paths.

    Arguments as for :func:`tcpa_viz.figures.figure1` (same default sample, so both figures show one image).
    """
    base, tc = load_pair(baseline, tcpa, demo_dir)
    dataset = resolve_data(data, base)
    index = choose_sample(dataset, base, tc) if index is None else int(index)
    if not 0 <= index < len(dataset):
        raise FigureArgumentError(f"--index {index} is outside the {len(dataset)} samples of the dataset; pass an "
                                  f"index in 0..{len(dataset) - 1}.")
    panels, queries = [], []
    depth = len(base.model.backbone.blocks)
    for loaded in (base, tc):
        images = ModelInputs(dataset, loaded.model, [index]).batch()
        attn, _, layout = capture_attention(loaded.model, images, layers=[layer])
        patches = query_patches(dataset, index, loaded.model, layout.grid_size)
        suffix = " (after the mask)" if loaded.model.config.uses_pools else ""
        panels.append((f"{loaded.label}{suffix}", attn, layout))
        queries.append(surface_queries(layout, patches.object_patch, patches.background_patch))
    title = (f"Fig. 3: 3D and 2D attention of block {layer % depth + 1}/{depth} (mean over heads), sample {index}; "
             "rows = queries [CLS | patches], columns = keys [CLS | prompts | patches]\n"
             "shared z range and colour scale for both models")
    out = Path(out_dir) if out_dir is not None else Path(demo_dir) / FIGURES_SUBDIR
    return write_figures(out, stem, figure3_matplotlib(panels, queries, title), figure3_plotly(panels, queries, title))
