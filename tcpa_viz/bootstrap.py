"""Paired bootstrap confidence interval of an accuracy difference over test images.

Two methods evaluated on the same test images, with one or more seeds each: ``correct_a`` and
``correct_b`` are ``[seeds, images]`` 0/1 arrays where row ``s`` of both comes from seed ``s`` (pairing
within the seed). Per image, the seed-averaged difference ``d[i] = mean_s(a[s, i] - b[s, i])`` is formed
first; its mean over images is exactly the mean over seeds of the two accuracies' difference. The images
are then resampled with replacement (the same draw for both methods and every seed: that is the pairing
over images) and the interval is the percentile interval of the resampled means of ``d``
(``scipy.stats.bootstrap``). The interval covers image sampling noise of the test set; seed-to-seed
training noise enters only through the average over the given seeds.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from tcpa_core.errors import TCPAError


class BootstrapInputError(TCPAError, ValueError):
    """Correctness arrays that cannot be paired (different shapes, no images, values other than 0/1)."""


@dataclass(frozen=True)
class BootstrapCI:
    """Difference of accuracies (fractions, ``a - b``) with its confidence interval."""

    difference: float
    low: float
    high: float
    confidence: float
    num_images: int
    num_seeds: int
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_matrix(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0 or array.shape[0] == 0:
        raise BootstrapInputError(f"{name} must be [seeds, images] (or [images]) with at least one image, got "
                                  f"shape {tuple(np.shape(values))}.")
    if not np.isin(array, (0.0, 1.0)).all():
        raise BootstrapInputError(f"{name} must hold per-image correctness (0 or 1 / False or True).")
    return array


def per_image_difference(correct_a: Any, correct_b: Any) -> np.ndarray:
    """``[images]`` seed-averaged correctness difference ``mean_s(a[s, i] - b[s, i])``."""
    a, b = _as_matrix(correct_a, "correct_a"), _as_matrix(correct_b, "correct_b")
    if a.shape != b.shape:
        raise BootstrapInputError(f"correct_a {a.shape} and correct_b {b.shape} must have the same [seeds, images] "
                                  "shape: the same seeds evaluated on the same test images in the same order.")
    return (a - b).mean(axis=0)


def paired_bootstrap_ci(correct_a: Any, correct_b: Any, samples: int = 10_000, confidence: float = 0.95,
                        seed: int = 0) -> BootstrapCI:
    """Percentile bootstrap interval of ``accuracy(a) - accuracy(b)``, paired over images and seeds.

    Args:
        correct_a, correct_b: ``[seeds, images]`` (or ``[images]``) per-image correctness, row ``s`` of both
            from the same seed, columns the same test images.
        samples: bootstrap resamples of the images.
        confidence: level of the interval (0.95: the 2.5 and 97.5 percentiles).
        seed: seed of the resampling.
    """
    if samples < 1:
        raise BootstrapInputError(f"samples must be >= 1, got {samples}.")
    if not 0 < confidence < 1:
        raise BootstrapInputError(f"confidence must be in (0, 1), got {confidence}.")
    d = per_image_difference(correct_a, correct_b)
    estimate = float(d.mean())
    if np.all(d == d[0]):
        low = high = estimate
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
            result = stats.bootstrap((d,), np.mean, n_resamples=samples, confidence_level=confidence,
                                     method="percentile", vectorized=True, random_state=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return BootstrapCI(difference=estimate, low=low, high=high, confidence=confidence, num_images=int(d.size),
                       num_seeds=int(np.asarray(correct_a).reshape(-1, d.size).shape[0]), samples=samples)


__all__ = ["BootstrapCI", "BootstrapInputError", "paired_bootstrap_ci", "per_image_difference"]
