"""The demo task's test digits at three clutter levels, for the multi-dataset t-SNE of Fig. 6.

The demo has a single downstream task, so Fig. 6's "several datasets" become three versions of the same
held-out source digits (the ``test`` split of :class:`tcpa_core.data.DigitsOnClutter`, same seed, so no
training digit appears):

``plain``
    each digit on a flat random colour (no clutter at all: easier than training);
``clutter``
    the test split exactly as rendered for training and evaluation;
``heavy``
    the ``clutter`` images with extra random scribbles and speckle painted **over** them (the digit is
    partly occluded: harder than training).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tcpa_core.data import DigitsOnClutter, render_digit
from tcpa_core.data.canvas import bezier, composite, random_colour, stroke_mask, to_uint8

from ..errors import FigureArgumentError

ClutterLevel = Literal["plain", "clutter", "heavy"]
CLUTTER_LEVELS: tuple[ClutterLevel, ...] = ("plain", "clutter", "heavy")
LEVEL_TITLES: dict[str, str] = {
    "plain": "plain background",
    "clutter": "training clutter",
    "heavy": "extra scribbles over the digit",
}


def _scribbles(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` (uint8 ``[S, S, 3]``) with 4-7 opaque random curves and speckle painted over it."""
    size = image.shape[0]
    canvas = image.astype(np.float32) / 255.0
    for _ in range(int(rng.integers(4, 8))):
        start = rng.uniform(0, size, 2)
        ctrl = (start + rng.normal(0.0, size / 3, (4, 2))).astype(np.float32)
        ctrl[0] = start
        alpha = stroke_mask([bezier(ctrl, 24)], rng.uniform(1.0, 2.2), size)
        composite(canvas, alpha * rng.uniform(0.7, 1.0), random_colour(rng))
    speckle = (rng.random((size, size)) < 0.04).astype(np.float32)
    composite(canvas, speckle * rng.uniform(0.5, 0.9), random_colour(rng))
    return to_uint8(canvas)


class DigitsAtClutterLevel(Dataset):
    """The test digits of the demo task at one clutter level (see the module docstring).

    ``dataset[i]`` -> ``(PIL RGB image, label)``. Attributes like :class:`DigitsOnClutter`: ``targets``
    ``[N]``, ``classes``, ``boxes`` ``[N, 4]`` (x0, y0, x1, y1 of the digit's ink; ends exclusive) and
    ``raw_image(i)`` (uint8 ``[size, size, 3]``).
    """

    classes: list[str] = DigitsOnClutter.classes

    def __init__(self, level: ClutterLevel = "clutter", split: str = "test", seed: int = 0, size: int = 64) -> None:
        if level not in CLUTTER_LEVELS:
            raise FigureArgumentError(f"clutter level must be one of {', '.join(CLUTTER_LEVELS)}, got {level!r}.")
        self.level, self.split, self.seed = level, split, int(seed)
        base = DigitsOnClutter(split=split, seed=seed, size=size)
        self.labels = base.labels.clone()
        images, boxes = [], []
        for i in range(len(base)):
            src = int(base.source_indices[i])
            rng = np.random.default_rng([self.seed, src, CLUTTER_LEVELS.index(level), 4409])
            if level == "plain":
                background = np.broadcast_to(random_colour(rng), (size, size, 3))
                image, _, box = render_digit(rng, _digit_scans()[src], size, background=background)
            elif level == "heavy":
                image, box = _scribbles(rng, base.raw_image(i)), tuple(base.boxes[i].tolist())
            else:
                image, box = base.raw_image(i), tuple(base.boxes[i].tolist())
            images.append(image)
            boxes.append(box)
        self._images = np.stack(images)
        self.boxes = torch.tensor(boxes, dtype=torch.long)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self._images)

    def raw_image(self, index: int) -> np.ndarray:
        """Sample ``index`` as uint8 ``[size, size, 3]``."""
        return self._images[index]

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self._images[index]), int(self.labels[index])


@lru_cache(maxsize=1)
def _digit_scans() -> np.ndarray:
    """The 8x8 scans (values 0-16) of scikit-learn's ``load_digits()``, ``[1797, 8, 8]``; read once."""
    from sklearn.datasets import load_digits

    return load_digits().images
