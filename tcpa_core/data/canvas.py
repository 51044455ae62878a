"""Low-level drawing helpers shared by the procedural pretraining data and the digits demo task.

Every helper takes an explicit ``numpy.random.Generator`` so that callers stay deterministic, works on
float32 canvases ``[H, W, 3]`` with values in ``[0, 1]`` and alpha masks ``[H, W]`` in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Perceived brightness of ``rgb`` (``[..., 3]`` in ``[0, 1]``) -> ``[...]``."""
    return rgb @ LUMA


def smooth_noise(rng: np.random.Generator, size: int, grid: int, channels: int = 3) -> np.ndarray:
    """Band-limited noise: a random ``grid x grid`` lattice upsampled bicubically -> ``[size, size, C]``.

    Values are roughly in ``[0, 1]`` (bicubic overshoot is clipped).
    """
    lattice = rng.integers(0, 256, size=(grid, grid, channels), dtype=np.uint8)
    mode = "RGB" if channels == 3 else "L"
    image = Image.fromarray(lattice if channels == 3 else lattice[..., 0], mode=mode)
    up = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    return up.reshape(size, size, channels)


def grating(rng: np.random.Generator, size: int) -> np.ndarray:
    """A sinusoidal grating (random frequency, orientation, phase) -> ``[size, size]`` in ``[-1, 1]``."""
    theta = rng.uniform(0.0, np.pi)
    cycles = rng.uniform(2.0, 12.0)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    coords = np.arange(size, dtype=np.float32) / size
    proj = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]
    return np.sin(2.0 * np.pi * cycles * proj + phase).astype(np.float32)


def checker(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (possibly rotated) checkerboard -> ``[size, size]`` with values in ``{-1, 1}``."""
    period = rng.uniform(4.0, 16.0)
    theta = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (np.cos(theta) * xx + np.sin(theta) * yy) / period
    v = (-np.sin(theta) * xx + np.cos(theta) * yy) / period
    return np.where((np.floor(u) + np.floor(v)) % 2 == 0, 1.0, -1.0).astype(np.float32)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random RGB colour -> ``[3]`` float32 in ``[0, 1]``."""
    return rng.uniform(0.0, 1.0, size=3).astype(np.float32)


def contrasting_colour(
    rng: np.random.Generator, background: np.ndarray, min_contrast: float = 0.3,
) -> np.ndarray:
    """A random colour whose luminance differs from that of ``background`` (``[3]``) by >= ``min_contrast``
    (or by as much as possible when no colour can reach it).

    Returns ``[3]`` float32 in ``[0, 1]``.
    """
    bg_lum = float(luminance(background))
    min_contrast = min(min_contrast, max(bg_lum, 1.0 - bg_lum))
    choices = []
    if bg_lum - min_contrast >= 0.0:
        choices.append((0.0, bg_lum - min_contrast))
    if bg_lum + min_contrast <= 1.0:
        choices.append((bg_lum + min_contrast, 1.0))
    low, high = choices[int(rng.integers(len(choices)))]
    target = rng.uniform(low, high)
    hue = random_colour(rng)
    chroma = hue - luminance(hue)
    saturation = rng.uniform(0.0, 1.0)
    colour = np.clip(target + saturation * chroma, 0.0, 1.0)
    return colour.astype(np.float32)


def stroke_mask(
    polylines: Sequence[np.ndarray], width: float, size: int, supersample: int = 2,
) -> np.ndarray:
    """Anti-aliased mask of thick polylines with round joints and caps.

    ``polylines`` are arrays ``[P, 2]`` of ``(x, y)`` pixel coordinates on a ``size x size`` canvas.
    Drawn at ``supersample`` times the resolution and box-filtered down -> ``[size, size]`` in ``[0, 1]``.
    """
    big = size * supersample
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    w = max(1, int(round(width * supersample)))
    radius = w / 2.0
    for line in polylines:
        pts = line * supersample
        flat = [float(v) for v in pts.reshape(-1)]
        draw.line(flat, fill=255, width=w, joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    if supersample > 1:
        image = image.resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0


def soften(rng: np.random.Generator, alpha: np.ndarray, max_factor: float) -> np.ndarray:
    """Mimic a low-resolution scan: area-downsample ``alpha`` ``[H, W]`` by a random factor, then upsample
    it smoothly.

    Returns ``[H, W]`` in ``[0, 1]``.
    """
    size = alpha.shape[0]
    factor = rng.uniform(1.5, max(1.6, max_factor))
    small = max(2, int(round(size / factor)))
    image = Image.fromarray(alpha, mode="F")
    resample = Image.Resampling.BICUBIC if rng.random() < 0.5 else Image.Resampling.BILINEAR
    out = image.resize((small, small), Image.Resampling.BOX).resize((size, size), resample)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def composite(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Paint ``colour`` (``[3]``) onto ``canvas`` (``[H, W, 3]``) through ``alpha`` (``[H, W]``), in place."""
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += a * colour
    return canvas


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` float in ``[0, 1]`` -> ``[H, W, 3]`` uint8 (clipped, rounded)."""
    return (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def bezier(points: np.ndarray, num: int) -> np.ndarray:
    """Sample a cubic Bezier curve with control points ``[4, 2]`` at ``num`` points -> ``[num, 2]``."""
    t = np.linspace(0.0, 1.0, num, dtype=np.float32)[:, None]
    p0, p1, p2, p3 = points
    return ((1 - t) ** 3) * p0 + 3 * ((1 - t) ** 2) * t * p1 + 3 * (1 - t) * (t**2) * p2 + (t**3) * p3


def ellipse_arc(
    centre: np.ndarray, radii: np.ndarray, start: float, sweep: float, num: int, tilt: float = 0.0,
) -> np.ndarray:
    """Sample an elliptical arc (angles in radians) at ``num`` points -> ``[num, 2]``."""
    angles = start + np.linspace(0.0, sweep, num, dtype=np.float32)
    pts = np.stack([radii[0] * np.cos(angles), radii[1] * np.sin(angles)], axis=1)
    rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]], dtype=np.float32)
    return (pts @ rot.T + centre).astype(np.float32)


def blob_mask(rng: np.random.Generator, size: int, max_radius: float, supersample: int = 2) -> np.ndarray:
    """A random filled ellipse or rectangle at a random place -> anti-aliased mask ``[size, size]``."""
    big = size * supersample
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    cx, cy = rng.uniform(0, size, size=2) * supersample
    rx, ry = rng.uniform(1.0, max(1.5, max_radius), size=2) * supersample
    box = (cx - rx, cy - ry, cx + rx, cy + ry)
    if rng.random() < 0.6:
        draw.ellipse(box, fill=255)
    else:
        draw.rectangle(box, fill=255)
    if supersample > 1:
        image = image.resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0
