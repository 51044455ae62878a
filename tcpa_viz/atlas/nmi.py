"""Normalised mutual information from a contingency table (what the atlas accumulates instead of labels).

scikit-learn's ``normalized_mutual_info_score`` takes two label arrays; the atlas streams and keeps only the
contingency table, so the score is rebuilt from it with scikit-learn's ``mutual_info_score(contingency=...)``
and the same normalisation (arithmetic mean of the two entropies) and the same special cases. The tests check
that both give the same number on explicit labels.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mutual_info_score


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0]
    total = counts.sum()
    if total <= 0:
        return 0.0
    return float(-((counts / total) * (np.log(counts) - np.log(total))).sum())


def nmi_from_table(table: np.ndarray) -> float:
    """``normalized_mutual_info_score`` (arithmetic normalisation) of the two variables whose joint counts
    are ``table`` ``[A, B]``; NaN for an empty table."""
    table = np.asarray(table, dtype=np.float64)
    if table.sum() <= 0:
        return float("nan")
    rows, cols = table.sum(1), table.sum(0)
    n_rows, n_cols = int((rows > 0).sum()), int((cols > 0).sum())
    if n_rows == n_cols == 1:
        return 1.0
    table = table[rows > 0][:, cols > 0]
    mi = float(mutual_info_score(None, None, contingency=table))
    if abs(mi) < np.finfo(np.float64).eps:
        return 0.0
    normalizer = 0.5 * (_entropy(rows) + _entropy(cols))
    return float(mi / max(normalizer, np.finfo(np.float64).eps))


def nmi_with_chance(table: np.ndarray, shuffled: list[np.ndarray] | np.ndarray) -> dict[str, float]:
    """``{"nmi", "chance", "chance_std"}``: NMI of ``table`` and mean/std over the label-shuffled tables."""
    values = [nmi_from_table(t) for t in shuffled]
    finite = [v for v in values if np.isfinite(v)]
    return {"nmi": nmi_from_table(table),
            "chance": float(np.mean(finite)) if finite else float("nan"),
            "chance_std": float(np.std(finite)) if finite else float("nan")}
