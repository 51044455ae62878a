"""The demo downstream task: real handwritten digits on cluttered canvases, with ground-truth boxes.

Source digits are scikit-learn's bundled ``load_digits`` (1797 grey 8x8 scans, 10 classes, offline).
Each sample upsamples one digit smoothly to a random size (24-44 px tall at 64 px canvas size, aspect
jitter), paints it in a random colour that contrasts with its surroundings at a random position of a
cluttered canvas, and records the box of the pixels where its ink actually is. The clutter (smooth colour
noise, thin scribbles, filled blobs, speckle) follows the spirit of the pretraining backgrounds but with
other primitives and distributions.

Splits are made per class from a seeded permutation of the source digits (60 % train, 20 % val,
20 % test), so no source digit appears in two splits; use ``val`` for model selection and keep ``test``
for the final number.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from ..backbone import DEMO_MEAN, DEMO_STD
from .canvas import (
    bezier,
    blob_mask,
    composite,
    contrasting_colour,
    random_colour,
    smooth_noise,
    stroke_mask,
    to_uint8,
)
from .transforms import to_normalized_tensor

DIGIT_SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
INK_THRESHOLD = 0.25
"""Alpha above which a pixel counts as ink for the ground-truth box."""


@lru_cache(maxsize=1)
def _sklearn_digits() -> Any:
    """scikit-learn's bundled digits (``images`` [1797, 8, 8] in 0-16, ``target`` [1797]); read once."""
    return load_digits()


def digit_split_indices(split: str, seed: int = 0) -> np.ndarray:
    """Indices into ``load_digits()`` of the source digits of ``split`` (sorted, ``[M]`` int64).

    The three splits are disjoint and cover all 1797 digits; each holds ~60/20/20 % of every class.
    """
    if split not in DIGIT_SPLITS:
        raise ValueError(f"split must be one of {sorted(DIGIT_SPLITS)}, got {split!r}")
    targets = _sklearn_digits().target
    rng = np.random.default_rng([seed, 7867])
    chosen = []
    for cls in range(10):
        members = rng.permutation(np.flatnonzero(targets == cls))
        n_train = int(round(SPLIT_FRACTIONS[0] * len(members)))
        n_val = int(round(SPLIT_FRACTIONS[1] * len(members)))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, None)}
        start, stop = bounds[split]
        chosen.append(members[start:stop])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _clutter(rng: np.random.Generator, size: int) -> np.ndarray:
    """Digit-task clutter ``[size, size, 3]`` in ``[0, 1]``."""
    base = random_colour(rng)
    noise = smooth_noise(rng, size, int(rng.integers(3, 7)))
    canvas = np.clip(base + rng.uniform(0.1, 0.35) * 2.0 * (noise - 0.5), 0.0, 1.0).astype(np.float32)
    for _ in range(int(rng.integers(0, 4))):
        alpha = blob_mask(rng, size, size / 7)
        composite(canvas, alpha * rng.uniform(0.3, 0.8), random_colour(rng))
    for _ in range(int(rng.integers(1, 4))):
        start = rng.uniform(0, size, 2)
        ctrl = (start + rng.normal(0.0, size / 3, (4, 2))).astype(np.float32)
        ctrl[0] = start
        alpha = stroke_mask([bezier(ctrl, 20)], rng.uniform(0.8, 1.8), size)
        composite(canvas, alpha * rng.uniform(0.5, 1.0), random_colour(rng))
    if rng.random() < 0.3:
        speckle = (rng.random((size, size)) < rng.uniform(0.01, 0.05)).astype(np.float32)
        composite(canvas, speckle * rng.uniform(0.3, 0.8), random_colour(rng))
    if rng.random() < 0.5:
        canvas += rng.normal(0.0, rng.uniform(0.005, 0.03), canvas.shape).astype(np.float32)
    return np.clip(canvas, 0.0, 1.0)


def render_digit(
    rng: np.random.Generator, digit: np.ndarray, size: int = 64, background: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Place one 8x8 digit (values 0-16) on clutter, or on ``background`` (float ``[size, size, 3]`` in
    ``[0, 1]``) when given.

    Returns the image ``[size, size, 3]`` uint8, the digit's alpha ``[size, size]`` float32 in ``[0, 1]``
    and its ink box ``(x0, y0, x1, y1)`` in pixels (``x1``/``y1`` exclusive) where alpha > ``INK_THRESHOLD``.
    """
    canvas = _clutter(rng, size) if background is None else np.array(background, dtype=np.float32)
    if canvas.shape != (size, size, 3):
        raise ValueError(f"background must be [{size}, {size}, 3], got {list(canvas.shape)}")
    height = int(round(rng.uniform(24.0, 44.0) * size / 64.0))
    width = int(round(height * rng.uniform(0.7, 1.0)))
    glyph = Image.fromarray(np.asarray(digit, dtype=np.float32) / 16.0, mode="F")
    small = np.clip(np.asarray(glyph.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32), 0.0, 1.0)
    x0 = int(rng.integers(0, size - width + 1))
    y0 = int(rng.integers(0, size - height + 1))
    alpha = np.zeros((size, size), dtype=np.float32)
    alpha[y0:y0 + height, x0:x0 + width] = np.clip(small * rng.uniform(1.0, 1.4), 0.0, 1.0)
    region = canvas[y0:y0 + height, x0:x0 + width].reshape(-1, 3).mean(0)
    composite(canvas, alpha, contrasting_colour(rng, region, min_contrast=0.4))
    rows = np.flatnonzero((alpha > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((alpha > INK_THRESHOLD).any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return to_uint8(canvas), alpha, box


class DigitsOnClutter(Dataset):
    """scikit-learn digits pasted on cluttered ``size x size`` RGB canvases (see the module docstring).

    ``dataset[i]`` -> ``(image, label)``: ``image`` is ``transform(PIL RGB image)`` when a transform is given,
    else a float tensor ``[3, size, size]`` normalised with ``mean``/``std`` (the demo backbone's by default).
    Each source digit of the split is rendered ``samples_per_digit`` times (different placements/clutter);
    ``max_sources`` keeps only the first that many source digits of the split (quick runs; the sources are
    sorted by their index in ``load_digits()``, whose classes cycle, so a prefix stays roughly balanced).
    Attributes: ``labels`` LongTensor ``[N]``, ``boxes`` LongTensor ``[N, 4]`` (x0, y0, x1, y1; ends
    exclusive), ``source_indices`` LongTensor ``[N]`` (index into ``load_digits()``), ``classes``.
    All samples are rendered once at construction (about 1 ms each) and kept in memory.
    """

    classes: list[str] = [str(d) for d in range(10)]

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        size: int = 64,
        transform: Callable[[Image.Image], Any] | None = None,
        samples_per_digit: int = 1,
        mean: tuple[float, float, float] = DEMO_MEAN,
        std: tuple[float, float, float] = DEMO_STD,
        max_sources: int | None = None,
    ) -> None:
        if samples_per_digit < 1:
            raise ValueError(f"samples_per_digit must be >= 1, got {samples_per_digit}")
        if size < 48:
            raise ValueError(f"size must be >= 48 so that the largest digit fits, got {size}")
        self.split, self.seed, self.size = split, int(seed), int(size)
        self.transform = transform
        self.samples_per_digit = int(samples_per_digit)
        self.mean, self.std = tuple(mean), tuple(std)
        sources = digit_split_indices(split, self.seed)
        if max_sources is not None:
            if max_sources < 1:
                raise ValueError(f"max_sources must be >= 1, got {max_sources}")
            sources = sources[:max_sources]
        bunch = _sklearn_digits()
        images, boxes, labels, origin = [], [], [], []
        for copy in range(self.samples_per_digit):
            for src in sources:
                rng = np.random.default_rng([self.seed, DIGIT_SPLITS[split], int(src), copy, 3571])
                image, _, box = render_digit(rng, bunch.images[src], self.size)
                images.append(image)
                boxes.append(box)
                labels.append(int(bunch.target[src]))
                origin.append(int(src))
        self._images = np.stack(images)
        self.boxes = torch.tensor(boxes, dtype=torch.long)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.source_indices = torch.tensor(origin, dtype=torch.long)

    def __len__(self) -> int:
        return len(self._images)

    @property
    def targets(self) -> list[int]:
        """Labels as a list of ints (``[N]``), like torchvision datasets."""
        return self.labels.tolist()

    def raw_image(self, index: int) -> np.ndarray:
        """Sample ``index`` as a uint8 image ``[size, size, 3]`` (for overlays)."""
        return self._images[index]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self._images[index]
        label = int(self.labels[index])
        if self.transform is not None:
            return self.transform(Image.fromarray(image)), label
        return to_normalized_tensor(image, self.mean, self.std), label
