"""Patch-grid maps on images: bilinear upsampling, colour overlay, patch boxes, static and interactive plots.

A grid map ``[h, w]`` covers the image evenly: patch ``(r, c)`` owns the pixel box
``x in [c*W/w, (c+1)*W/w)``, ``y in [r*H/h, (r+1)*H/h)`` for an ``H x W`` image, whatever the image size
(it need not be a multiple of the grid, nor square). Upsampling is bilinear with ``align_corners=False``,
so each patch's value sits at its box centre, or ``nearest``: every pixel takes the value of the patch that owns
it (the map drawn as the blocks it was computed on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tcpa_core.errors import InputShapeError

from .colors import GROUP_COLORS, get_cmap, plotly_colorscale
from .errors import AnalysisArgumentError, AnalysisIndexError
from .tokens import GROUP_TITLES, PROMPT_GROUPS, to_numpy

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.axes import Axes

    from .attention_maps import TokenAttention

MapNormalization = Literal["minmax", "max", "none"]
Interpolation = Literal["bilinear", "nearest"]


def as_rgb_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Convert an image to ``uint8 [H, W, 3]``.

    Accepts ``[H, W]``, ``[H, W, 1|3|4]`` or channel-first ``[1|3, H, W]``; uint8, or float in ``[0, 1]``
    (floats outside that range, e.g. normalised tensors, are min-max rescaled for display).
    """
    img = to_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3, 4):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise InputShapeError(f"expected an image [H, W, 3] (or [H, W], [H, W, 4], [3, H, W]), got {img.shape}")
    img = img[..., :3]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    img = img.astype(np.float64)
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    if lo < 0.0 or hi > 1.0:
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.ascontiguousarray(np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8))


def upsample_map(grid_map: np.ndarray | torch.Tensor, size: tuple[int, int],
                 interpolation: Interpolation = "bilinear") -> np.ndarray:
    """Upsample ``[h, w]`` (or ``[batch, h, w]``) to ``size = (H, W)`` pixels, float32: ``bilinear``, or
    ``nearest`` (pixel ``(y, x)`` takes the patch holding its centre: row ``floor((y + 0.5) h / H)``, column
    ``floor((x + 0.5) w / W)``)."""
    if interpolation not in ("bilinear", "nearest"):
        raise AnalysisArgumentError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    m = torch.as_tensor(to_numpy(grid_map), dtype=torch.float32)
    if m.ndim not in (2, 3):
        raise InputShapeError(f"expected a grid map [h, w] or [batch, h, w], got shape {tuple(m.shape)}")
    batched = m.ndim == 3
    m4 = m[:, None] if batched else m[None, None]
    pixels = (int(size[0]), int(size[1]))
    if interpolation == "bilinear":
        out = F.interpolate(m4, size=pixels, mode="bilinear", align_corners=False)
    else:
        out = F.interpolate(m4, size=pixels, mode="nearest-exact")
    return (out[:, 0] if batched else out[0, 0]).numpy()


def normalize_map(values: np.ndarray, mode: MapNormalization = "minmax") -> np.ndarray:
    """Scale a map to ``[0, 1]`` for colouring: ``minmax``, ``max`` (divide by the maximum) or ``none``."""
    values = np.asarray(values, dtype=np.float64)
    if mode == "none":
        return np.clip(values, 0.0, 1.0)
    hi = float(values.max()) if values.size else 0.0
    if mode == "max":
        return values / hi if hi > 0 else np.zeros_like(values)
    if mode == "minmax":
        lo = float(values.min()) if values.size else 0.0
        return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    raise AnalysisArgumentError(f"normalize must be 'minmax', 'max' or 'none', got {mode!r}")


def patch_box(
    grid_size: tuple[int, int], image_size: tuple[int, int], row: int, col: int
) -> tuple[float, float, float, float]:
    """Pixel box ``(x0, y0, x1, y1)`` of patch ``(row, col)`` on an image of ``image_size = (H, W)``.

    Edges are pixel-boundary coordinates (pixel ``j`` spans ``[j, j+1)``), half-open on the right/bottom.
    """
    h, w = grid_size
    if not (0 <= row < h and 0 <= col < w):
        raise AnalysisIndexError(f"patch ({row}, {col}) is outside the {h}x{w} patch grid")
    height, width = image_size
    return (col * width / w, row * height / h, (col + 1) * width / w, (row + 1) * height / h)


def overlay_on_image(
    image: np.ndarray | torch.Tensor,
    grid_map: np.ndarray | torch.Tensor,
    cmap: str = "jet",
    alpha: float = 0.5,
    normalize: MapNormalization = "minmax",
    interpolation: Interpolation = "bilinear",
) -> np.ndarray:
    """Blend the colour-mapped ``grid_map [h, w]``, upsampled by ``interpolation`` (see :func:`upsample_map`),
    over ``image``; returns ``uint8 [H, W, 3]``. ``normalize="none"`` takes the map as already in ``[0, 1]``."""
    if not 0.0 <= alpha <= 1.0:
        raise AnalysisArgumentError(f"alpha must be in [0, 1], got {alpha}")
    img = as_rgb_uint8(image)
    heat = normalize_map(upsample_map(grid_map, img.shape[:2], interpolation), normalize)
    colours = get_cmap(cmap)(heat)[..., :3] * 255.0
    blended = (1.0 - alpha) * img.astype(np.float64) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def draw_patch_box(
    image: np.ndarray | torch.Tensor,
    grid_size: tuple[int, int],
    row: int,
    col: int,
    color: tuple[int, int, int] = (255, 0, 0),
    thickness: int | None = None,
) -> np.ndarray:
    """Copy of ``image`` (as ``uint8 [H, W, 3]``) with a rectangle drawn on the border of patch ``(row, col)``.

    ``thickness`` defaults to about 1/16 of the patch's smaller side (at least one pixel).
    """
    img = as_rgb_uint8(image).copy()
    height, width = img.shape[:2]
    x0, y0, x1, y1 = patch_box(grid_size, (height, width), row, col)
    c0, r0 = int(np.floor(x0)), int(np.floor(y0))
    c1, r1 = max(int(np.ceil(x1)), c0 + 1), max(int(np.ceil(y1)), r0 + 1)
    t = thickness if thickness is not None else max(1, int(min(r1 - r0, c1 - c0) // 16))
    colour = np.asarray(color, dtype=np.uint8)
    img[r0 : min(r0 + t, r1), c0:c1] = colour
    img[max(r1 - t, r0) : r1, c0:c1] = colour
    img[r0:r1, c0 : min(c0 + t, c1)] = colour
    img[r0:r1, max(c1 - t, c0) : c1] = colour
    return img


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plot_overlay_matplotlib(
    image: np.ndarray | torch.Tensor,
    grid_map: np.ndarray | torch.Tensor,
    box: tuple[int, int] | None = None,
    title: str | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    normalize: MapNormalization = "minmax",
    colorbar: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Static overlay of a grid map ``[h, w]`` on ``image``, optional box around patch ``box = (row, col)``.

    The colour bar shows the map's own values (before normalisation). Returns the matplotlib Figure.
    """
    img = as_rgb_uint8(image)
    values = to_numpy(grid_map).astype(np.float64)
    if values.ndim != 2:
        raise InputShapeError(f"expected one grid map [h, w], got shape {values.shape}; index the batch first")
    fig, ax = _new_axes(ax, (4.2, 4.0))
    ax.imshow(overlay_on_image(img, values, cmap=cmap, alpha=alpha, normalize=normalize), interpolation="nearest")
    if box is not None:
        x0, y0, x1, y1 = patch_box(values.shape, img.shape[:2], *box)
        ax.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=2.0)
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    if colorbar:
        lo, hi = float(values.min()), float(values.max())
        if normalize == "max":
            lo = 0.0
        elif normalize == "none":
            lo, hi = 0.0, 1.0
        mappable = ScalarMappable(norm=Normalize(lo, hi if hi > lo else lo + 1e-12), cmap=get_cmap(cmap))
        fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03, label="attention")
    return fig


def plot_overlay_plotly(
    image: np.ndarray | torch.Tensor,
    grid_map: np.ndarray | torch.Tensor,
    box: tuple[int, int] | None = None,
    title: str | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    smooth: bool = True,
) -> go.Figure:
    """Interactive overlay: the image, the grid map as a translucent heatmap over it (hover gives each
    patch's ``(row, col)`` and value), and an optional red box around patch ``box = (row, col)``.

    ``smooth`` interpolates the heatmap between patch centres (plotly's ``zsmooth="best"``).
    """
    import plotly.graph_objects as go

    img = as_rgb_uint8(image)
    values = to_numpy(grid_map).astype(np.float64)
    if values.ndim != 2:
        raise InputShapeError(f"expected one grid map [h, w], got shape {values.shape}; index the batch first")
    height, width = img.shape[:2]
    h, w = values.shape
    dx, dy = width / w, height / h
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    fig = go.Figure()
    fig.add_trace(go.Image(z=img, hoverinfo="skip"))
    fig.add_trace(
        go.Heatmap(
            z=values,
            x0=dx / 2 - 0.5,
            dx=dx,
            y0=dy / 2 - 0.5,
            dy=dy,
            opacity=alpha,
            colorscale=plotly_colorscale(cmap),
            zsmooth="best" if smooth else False,
            customdata=np.stack([rows, cols], axis=-1),
            hovertemplate="patch (%{customdata[0]}, %{customdata[1]})<br>attention %{z:.4g}<extra></extra>",
            colorbar=dict(title=dict(text="attention")),
        )
    )
    if box is not None:
        x0, y0, x1, y1 = patch_box((h, w), (height, width), *box)
        fig.add_shape(
            type="rect", x0=x0 - 0.5, y0=y0 - 0.5, x1=x1 - 0.5, y1=y1 - 0.5, line=dict(color="red", width=2)
        )
    fig.update_xaxes(visible=False, range=[-0.5, width - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[height - 0.5, -0.5], scaleanchor="x", constrain="domain")
    fig.update_layout(title=dict(text=title or ""), width=520, height=480, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def _prompt_bar_data(ta: TokenAttention, index: int) -> list[tuple[str, np.ndarray]]:
    """Non-empty (group, weights) pairs of the prefix and prompt columns of image ``index``."""
    parts = [("prefix", to_numpy(ta.prefix_weights[index]))]
    parts += [(g, to_numpy(ta.prompt_weights[g][index])) for g in PROMPT_GROUPS]
    return [(g, v.astype(np.float64)) for g, v in parts if v.size]


def _column_names(group: str, n: int, prompt_length: int) -> list[str]:
    lp = max(prompt_length, 1)
    if group in ("cls_prompts", "image_prompts"):
        pool = "CLS" if group == "cls_prompts" else "image"
        return [f"{pool} pool entry {j // lp}" + (f", token {j % lp}" if lp > 1 else "") for j in range(n)]
    return [f"{GROUP_TITLES[group]} key {j}" for j in range(n)]


def _box_for(ta: TokenAttention, box: tuple[int, int] | Literal["auto"] | None) -> tuple[int, int] | None:
    if box != "auto":
        return box
    label = ta.query_label
    if label.startswith("patch("):
        r, c = label[len("patch(") : -1].split(",")
        return int(r), int(c)
    return None


def plot_token_attention_matplotlib(
    image: np.ndarray | torch.Tensor,
    ta: TokenAttention,
    index: int = 0,
    box: tuple[int, int] | Literal["auto"] | None = "auto",
    title: str | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Figure:
    """Paper Fig. 1 style panel for one token and image ``index`` of a :class:`TokenAttention`:
    left, the patch weights overlaid on the image (the query patch boxed when ``box="auto"``);
    right, bars of the weights on the prefix and every prompt key column, coloured by group, with
    each group's total and the row sum (which is < 1 under the TCPA mask)."""
    fig = Figure(figsize=(9.0, 4.0), layout="constrained")
    ax_img, ax_bar = fig.subplots(1, 2, width_ratios=[1.0, 1.25])
    plot_overlay_matplotlib(
        image, ta.grid[index], box=_box_for(ta, box), cmap=cmap, alpha=alpha, ax=ax_img,
        title=f"{ta.query_label}: patch keys (sum {float(ta.grid[index].sum()):.3f})",
    )
    x = 0
    ticks, tick_labels = [], []
    for group, weights in _prompt_bar_data(ta, index):
        xs = np.arange(x, x + weights.size)
        ax_bar.bar(xs, weights, color=GROUP_COLORS[group], width=0.85)
        ticks.append(x + (weights.size - 1) / 2)
        tick_labels.append(f"{GROUP_TITLES[group]}\n(sum {weights.sum():.3f})")
        x += weights.size + 1
    ax_bar.set_xticks(ticks, tick_labels, fontsize="small")
    ax_bar.set_ylabel("attention")
    ax_bar.set_title(f"prefix and prompt keys (row sum {float(ta.row_sum[index]):.3f})")
    if title:
        fig.suptitle(title)
    return fig


def plot_token_attention_plotly(
    image: np.ndarray | torch.Tensor,
    ta: TokenAttention,
    index: int = 0,
    box: tuple[int, int] | Literal["auto"] | None = "auto",
    title: str | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> go.Figure:
    """Interactive version of :func:`plot_token_attention_matplotlib` (overlay + prompt-column bars)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    overlay = plot_overlay_plotly(image, ta.grid[index], box=_box_for(ta, box), cmap=cmap, alpha=alpha)
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.16,
        subplot_titles=(
            f"{ta.query_label}: patch keys (sum {float(ta.grid[index].sum()):.3f})",
            f"prefix and prompt keys (row sum {float(ta.row_sum[index]):.3f})",
        ),
    )
    for trace in overlay.data:
        fig.add_trace(trace, row=1, col=1)
    for shape in overlay.layout.shapes:
        fig.add_shape(shape, row=1, col=1)
    fig.data[1].colorbar.update(x=0.37, len=0.8, thickness=14)
    x = 0
    for group, weights in _prompt_bar_data(ta, index):
        xs = np.arange(x, x + weights.size)
        fig.add_trace(
            go.Bar(
                x=xs, y=weights, marker_color=GROUP_COLORS[group],
                name=f"{GROUP_TITLES[group]} (sum {weights.sum():.3f})",
                customdata=_column_names(group, weights.size, ta.prompt_length),
                hovertemplate="%{customdata}<br>attention %{y:.4g}<extra></extra>",
            ),
            row=1, col=2,
        )
        x += weights.size + 1
    height, width = as_rgb_uint8(image).shape[:2]
    fig.update_xaxes(visible=False, range=[-0.5, width - 0.5], constrain="domain", row=1, col=1)
    fig.update_yaxes(visible=False, range=[height - 0.5, -0.5], scaleanchor="x", constrain="domain", row=1, col=1)
    fig.update_xaxes(title_text="key column (grouped)", row=1, col=2)
    fig.update_yaxes(title_text="attention", row=1, col=2)
    fig.update_layout(title=dict(text=title or ""), width=1000, height=460, legend=dict(x=1.02, y=1.0))
    return fig

