"""Procedural pretraining data: stroke "glyphs" on cluttered backgrounds, generated on the fly.

Each of ``num_classes`` glyph classes is a fixed random figure of 2-3 thick strokes (straight lines, cubic
Bezier curves, elliptical arcs, closed loops; later strokes usually start on an earlier one, like pen
strokes). A sample draws its class's figure with an elastic deformation, a random affine map (rotation,
shear, aspect), scale (19-45 px) and position, stroke thickness and colour, optionally degraded to look
like an upsampled low-resolution scan, onto a random clutter background (smooth colour noise, gratings
or checkerboards, thin distractor strokes and blobs, pixel noise).

Everything about sample ``i`` comes from ``numpy.random.default_rng([seed, split_id, i])`` and the class
figures from ``glyph_seed``, so a dataset needs no disk and the same ``(seed, split, index)`` always gives
the same image, in any process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..backbone import DEMO_MEAN, DEMO_STD
from .canvas import (
    bezier,
    blob_mask,
    checker,
    composite,
    contrasting_colour,
    ellipse_arc,
    grating,
    random_colour,
    smooth_noise,
    soften,
    stroke_mask,
    to_uint8,
)
from .transforms import to_normalized_tensor

PROCEDURAL_SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
POINTS_PER_STROKE = 24


def glyph_templates(num_classes: int, glyph_seed: int = 0) -> list[list[np.ndarray]]:
    """The fixed figure of every glyph class: ``num_classes`` lists of 2-3 strokes, each ``[P, 2]``.

    Coordinates are in a nominal ``[-1, 1]^2`` square; each class depends only on ``(glyph_seed, class)``.
    """
    templates = []
    for cls in range(num_classes):
        rng = np.random.default_rng([glyph_seed, cls, 104729])
        strokes: list[np.ndarray] = []
        for _ in range(int(rng.integers(2, 4))):
            start = None
            if strokes and rng.random() < 0.7:
                previous = strokes[int(rng.integers(len(strokes)))]
                start = previous[int(rng.integers(POINTS_PER_STROKE))]
            strokes.append(_random_stroke(rng, start))
        templates.append(strokes)
    return templates


def _random_stroke(rng: np.random.Generator, start: np.ndarray | None) -> np.ndarray:
    """One template stroke ``[P, 2]``: a line, a Bezier curve, an arc or a closed loop."""
    kind = rng.choice(4, p=[0.25, 0.35, 0.25, 0.15])
    if kind == 0:
        p0 = rng.uniform(-1, 1, 2) if start is None else start
        direction = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.8, 2.0)
        p1 = np.clip(p0 + length * np.array([np.cos(direction), np.sin(direction)]), -1.2, 1.2)
        t = np.linspace(0, 1, POINTS_PER_STROKE)[:, None]
        return ((1 - t) * p0 + t * p1).astype(np.float32)
    if kind == 1:
        ctrl = rng.uniform(-1, 1, (4, 2))
        if start is not None:
            ctrl[0] = start
        return bezier(ctrl.astype(np.float32), POINTS_PER_STROKE)
    radii = rng.uniform(0.3, 0.9, 2) if kind == 2 else rng.uniform(0.25, 0.6, 2)
    sweep = rng.uniform(0.6, 1.7) * np.pi if kind == 2 else 2 * np.pi
    begin = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(-0.5, 0.5)
    if start is None:
        centre = rng.uniform(-0.5, 0.5, 2)
    else:
        offset = ellipse_arc(np.zeros(2, np.float32), radii, begin, 0.0, 1, tilt)[0]
        centre = start - offset
    return ellipse_arc(
        centre.astype(np.float32), radii.astype(np.float32), begin, sweep, POINTS_PER_STROKE, tilt,
    )


def _deform(rng: np.random.Generator, strokes: list[np.ndarray], strength: float) -> list[np.ndarray]:
    """Elastic + affine per-sample variation of a figure (a list of ``[P, 2]`` strokes)."""
    amp = rng.normal(0.0, 0.07 * strength, (2, 2))
    freq = rng.normal(0.0, 2.0, (2, 2))
    phase = rng.uniform(0, 2 * np.pi, 2)
    angle = rng.normal(0.0, 0.18 * strength)
    shear = rng.normal(0.0, 0.15 * strength)
    aspect = np.exp(rng.normal(0.0, 0.15 * strength))
    linear = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = linear @ np.array([[aspect, shear], [0.0, 1.0 / aspect]])
    out = []
    for pts in strokes:
        wave = np.sin(pts @ freq.T + phase)
        moved = pts + wave @ amp.T + rng.normal(0.0, 0.04 * strength, 2)
        out.append((moved @ linear.T).astype(np.float32))
    return out


def _background(rng: np.random.Generator, size: int, clutter: float) -> np.ndarray:
    """Random background ``[size, size, 3]`` in ``[0, 1]``; ``clutter`` (``[0, 1]``) sets how busy it is."""
    canvas = random_colour(rng)[None, None, :] + (0.05 + 0.4 * clutter) * 2.0 * (
        smooth_noise(rng, size, int(rng.integers(2, 10))) - 0.5
    )
    texture = rng.random()
    if texture < 0.4 * clutter:
        pattern = grating(rng, size) if texture < 0.25 * clutter else checker(rng, size)
        tint = random_colour(rng) - 0.5
        canvas = canvas + rng.uniform(0.05, 0.35) * pattern[..., None] * tint
    canvas = np.clip(canvas, 0.0, 1.0).astype(np.float32)
    for _ in range(int(rng.integers(0, 1 + round(5 * clutter)))):
        if rng.random() < 0.6:
            ctrl = rng.uniform(-0.2 * size, 1.2 * size, (4, 2)).astype(np.float32)
            alpha = stroke_mask([bezier(ctrl, 16)], rng.uniform(0.6, 1.6), size)
        else:
            alpha = blob_mask(rng, size, size / 10)
        composite(canvas, alpha * rng.uniform(0.4, 1.0), random_colour(rng))
    return canvas


def render_glyph_sample(
    rng: np.random.Generator, template: list[np.ndarray], size: int = 64, difficulty: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one deformed ``template`` on clutter.

    ``difficulty`` in ``[0, 1]`` scales every nuisance: at 0 the glyph is centred at half the canvas size,
    mildly deformed, high-contrast and sharp on a plain smooth background; at 1 (the default) scale,
    position, deformation and clutter take their full ranges.
    Returns the image ``[size, size, 3]`` uint8 and the glyph's ink alpha ``[size, size]`` float32
    in ``[0, 1]``.
    """
    d = float(np.clip(difficulty, 0.0, 1.0))
    clutter = float(rng.random()) * d
    canvas = _background(rng, size, clutter)
    strokes = _deform(rng, template, 0.4 + 0.6 * d)
    pts = np.concatenate(strokes)
    low, high = pts.min(0), pts.max(0)
    extent = float(max(high - low))
    scale_px = size * (0.5 + d * rng.uniform(-0.2, 0.2))
    scale = scale_px / max(extent, 1e-3)
    span = (high - low) * scale
    margin = 2.0
    anywhere = np.array([rng.uniform(margin, max(margin, size - margin - span[i])) for i in range(2)])
    offset = (size - span) / 2 + d * (anywhere - (size - span) / 2)
    placed = [((s - low) * scale + offset).astype(np.float32) for s in strokes]
    width = float(np.clip(scale_px * rng.uniform(0.08, 0.25), 1.2, 9.0))
    alpha = stroke_mask(placed, width, size)
    if rng.random() < 0.5 * d:
        alpha = soften(rng, alpha, scale_px / 8.0)
    x0, y0 = (int(v) for v in np.floor(offset))
    x1, y1 = (int(v) for v in np.ceil(offset + span))
    region = canvas[y0:max(y0 + 1, y1), x0:max(x0 + 1, x1)].reshape(-1, 3).mean(0)
    alpha = alpha * rng.uniform(0.85, 1.0)
    composite(canvas, alpha, contrasting_colour(rng, region, min_contrast=0.6 - 0.2 * d))
    if rng.random() < clutter:
        canvas += rng.normal(0.0, rng.uniform(0.005, 0.04), canvas.shape).astype(np.float32)
    return to_uint8(canvas), alpha


class ProceduralGlyphs(Dataset):
    """On-the-fly procedural glyph classification data (see the module docstring).

    ``dataset[i]`` -> ``(image, label)``: ``image`` is ``transform(PIL RGB image)`` when a transform is given,
    else a float tensor ``[3, size, size]`` normalised with ``mean``/``std``; ``label`` is
    ``i % num_classes``.
    With ``return_ink`` a third item is the glyph's ink alpha, a float tensor ``[size, size]`` in ``[0, 1]``
    (used for token-level targets during pretraining).
    Different ``split`` names give disjoint random streams from the same ``seed`` and the same classes.
    ``difficulty`` (``[0, 1]``) scales the nuisances (see :func:`render_glyph_sample`); with ``curriculum``
    > 0 it ramps up linearly from 0 over the first ``curriculum`` indices (read them in order to train
    easy-to-hard).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        split: str = "train",
        num_classes: int = 128,
        glyph_seed: int = 0,
        size: int = 64,
        transform: Callable[[Image.Image], Any] | None = None,
        mean: tuple[float, float, float] = DEMO_MEAN,
        std: tuple[float, float, float] = DEMO_STD,
        return_ink: bool = False,
        difficulty: float = 1.0,
        curriculum: int = 0,
    ) -> None:
        if split not in PROCEDURAL_SPLITS:
            raise ValueError(f"split must be one of {sorted(PROCEDURAL_SPLITS)}, got {split!r}")
        if num_samples < 1 or num_classes < 2 or size < 16:
            raise ValueError("ProceduralGlyphs needs num_samples >= 1, num_classes >= 2 and size >= 16")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.split = split
        self.num_classes = int(num_classes)
        self.glyph_seed = int(glyph_seed)
        self.size = int(size)
        self.transform = transform
        self.mean, self.std = tuple(mean), tuple(std)
        self.return_ink = bool(return_ink)
        self.difficulty = float(difficulty)
        self.curriculum = int(curriculum)
        self.templates = glyph_templates(self.num_classes, self.glyph_seed)
        self.classes = [f"glyph_{c:03d}" for c in range(self.num_classes)]

    def __len__(self) -> int:
        return self.num_samples

    def label(self, index: int) -> int:
        """Class of sample ``index`` (no rendering needed)."""
        return int(index) % self.num_classes

    def difficulty_of(self, index: int) -> float:
        """Nuisance level of sample ``index``: ``difficulty``, ramped up linearly from 0 over the first
        ``curriculum`` indices."""
        if self.curriculum > 0:
            return self.difficulty * min(1.0, index / self.curriculum)
        return self.difficulty

    def sample(self, index: int) -> tuple[np.ndarray, int, np.ndarray]:
        """Sample ``index``: image ``[size, size, 3]`` uint8, label, ink alpha ``[size, size]`` float32."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, PROCEDURAL_SPLITS[self.split], int(index)])
        template = self.templates[self.label(index)]
        image, alpha = render_glyph_sample(rng, template, self.size, self.difficulty_of(index))
        return image, self.label(index), alpha

    def raw_image(self, index: int) -> np.ndarray:
        """Sample ``index`` as a uint8 image ``[size, size, 3]``."""
        return self.sample(index)[0]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image, label, alpha = self.sample(index)
        if self.transform is not None:
            out = self.transform(Image.fromarray(image))
        else:
            out = to_normalized_tensor(image, self.mean, self.std)
        return (out, label, torch.from_numpy(alpha)) if self.return_ink else (out, label)

    @property
    def targets(self) -> list[int]:
        """Labels of all samples (``[N]`` ints)."""
        return [self.label(i) for i in range(self.num_samples)]

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description of the generator and its parameters (for model cards)."""
        return {
            "generator": f"{__name__}.{type(self).__name__}",
            "description": (
                "procedural stroke glyphs on clutter: each class a fixed figure of 2-3 strokes (lines, "
                "cubic Bezier curves, elliptical arcs, loops); per sample elastic + affine deformation, "
                "scale 19-45 px, random position, thickness, contrasting colour, 50% low-resolution "
                "softening; backgrounds of smooth colour noise, gratings/checkerboards, thin distractor "
                "strokes and blobs, pixel noise"
            ),
            "num_classes": self.num_classes,
            "glyph_seed": self.glyph_seed,
            "seed": self.seed,
            "split": self.split,
            "size": self.size,
            "num_samples": self.num_samples,
            "difficulty": self.difficulty,
            "curriculum": self.curriculum,
        }

