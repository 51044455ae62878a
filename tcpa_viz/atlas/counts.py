"""Streaming counts of one prompt pool of one block: the accumulator behind :func:`tcpa_viz.prompt_atlas`.

Memory is independent of the number of images: every statistic is a fixed-size array, except

- the distinct selected sets (a ``Counter`` keyed by the packed set, bounded by the number of distinct sets,
  at most ``C(N, K)``; with the class label: distinct (set, class) pairs, once per label shuffle), and
- a bounded uniform sample of ``jaccard_sample`` CLS sets (bottom-k by a hash of the image index) used for
  the across-image Jaccard when there are too many distinct sets for the exact computation.

Definitions (``N`` pool entries, ``K`` = top-k, a token selects ``K`` entries ordered by similarity):

- *selected*: number of (image, token) pairs that chose the entry at any rank; *top1*: at rank 0;
- *rank-weighted*: ``sum_r w_r * count_r`` with ``w_r = (K - r) / K`` for rank ``r = 0..K-1`` (1 for the
  first choice, ``1/K`` for the last);
- *object / background*: a patch is an object token when its centre lies inside the image's ground-truth box
  (:func:`tcpa_viz.atlas.data.object_patches`); the CLS token is neither;
- *co-selection* ``[N, N]``: tokens that chose both entries (diagonal = selected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class SetTable:
    """Tokens per (distinct selected set, class label), for the true labels and every label shuffle.

    ``keys``: packed sets (``ceil(N / 8)`` bytes each) in first-seen order; ``table`` ``[1 + S, sets, C]``
    int64 (row 0: true labels). Memory: ``8 (1 + S) C`` bytes per distinct set.
    """

    def __init__(self, width: int, labelings: int, num_classes: int = 0) -> None:
        self.width, self.labelings, self.num_classes = width, labelings, num_classes
        self.index: dict[bytes, int] = {}
        self.keys: list[bytes] = []
        self._table = np.zeros((labelings, 16, num_classes), dtype=np.int64)

    @property
    def table(self) -> np.ndarray:
        return self._table[:, : len(self.keys)]

    def counts(self) -> dict[bytes, int]:
        """Tokens per distinct set."""
        totals = self.table[0].sum(-1) if self.keys else np.zeros(0, np.int64)
        return {k: int(v) for k, v in zip(self.keys, totals, strict=True)}

    def __len__(self) -> int:
        return len(self.keys)

    def _ids(self, keys: list[bytes]) -> np.ndarray:
        ids = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            j = self.index.get(key)
            if j is None:
                j = self.index[key] = len(self.keys)
                self.keys.append(key)
            ids[i] = j
        if len(self.keys) > self._table.shape[1]:
            grown = np.zeros((self.labelings, 2 * len(self.keys), self.num_classes), dtype=np.int64)
            grown[:, : self._table.shape[1]] = self._table
            self._table = grown
        return ids

    def add(self, packed: np.ndarray, token_labels: np.ndarray, num_classes: int) -> None:
        """Add tokens: ``packed`` ``[M, W]`` uint8 sets, ``token_labels`` ``[1 + S, M]`` labels."""
        rows = np.ascontiguousarray(packed)
        view = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
        unique, inverse = np.unique(view, return_inverse=True)
        ids = self._ids([u.tobytes() for u in unique])
        u = len(unique)
        codes = inverse.ravel()[None, :] * num_classes + token_labels
        for s in range(self.labelings):
            hist = np.bincount(codes[s], minlength=u * num_classes).reshape(u, num_classes)
            self._table[s, ids] += hist

    def merge(self, other: SetTable) -> None:
        """Add another shard's table."""
        if not other.keys:
            return
        ids = self._ids(list(other.keys))
        self._table[:, ids] += other.table


def rank_weights(topk: int) -> np.ndarray:
    """``[K]`` float64: ``w_r = (K - r) / K``."""
    return (topk - np.arange(topk, dtype=np.float64)) / topk


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """A 64-bit integer hash (SplitMix64 finaliser) of ``values`` [M] uint64: priorities of the bottom-k sample.
    numpy has no vectorised integer hash, hence these few lines."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def count_rows(rows: np.ndarray) -> dict[bytes, int]:
    """Occurrences of each distinct row of a ``[M, W]`` uint8 array, keyed by the row's bytes."""
    if rows.shape[0] == 0:
        return {}
    rows = np.ascontiguousarray(rows)
    view = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
    unique, counts = np.unique(view, return_counts=True)
    return {u.tobytes(): int(c) for u, c in zip(unique, counts, strict=True)}


def unpack_set(key: bytes, pool_size: int) -> list[int]:
    """Entries of a packed selected set (the first ``ceil(N / 8)`` bytes of a key)."""
    bits = np.unpackbits(np.frombuffer(key[: (pool_size + 7) // 8], dtype=np.uint8))[:pool_size]
    return np.flatnonzero(bits).tolist()


@dataclass
class PoolCounts:
    """Counts of one pool (``"cls"`` or ``"image"``) of one block; see the module docstring.

    Array attributes (float64, exact integers): ``rank_counts [K, N]``, ``class_counts [C, N]`` (any rank),
    ``class_top1 [C, N]``, ``class_tokens [C]``, ``shuffled_class_top1 [S, C, N]`` (labels of image ``i``
    replaced by those of image ``perm_s(i)``), ``region_counts / region_top1 [2, N]`` (row 0 object, row 1
    background), ``region_tokens [2]``, ``shuffled_region_top1 [S, 2, N]`` (boxes of another image),
    ``position_counts / position_top1 [T, N]`` (``T`` tokens per image: 1 for CLS, the patches for image),
    ``coselect [N, N]``, ``totals`` = (images, tokens, sum of within-image mean pairwise Jaccard).
    """

    layer: int
    pool: str
    size: int
    topk: int
    tokens: int
    num_classes: int
    num_shuffles: int
    jaccard_sample: int = 2048
    seed: int = 0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    sets: SetTable = field(default_factory=lambda: SetTable(0, 0))
    sample: tuple[np.ndarray, np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0), np.zeros(0), np.zeros(0)))

    def __post_init__(self) -> None:
        n, k, c, s, t = self.size, self.topk, self.num_classes, self.num_shuffles, self.tokens
        shapes = {"rank_counts": (k, n), "class_counts": (c, n), "class_top1": (c, n), "class_tokens": (c,),
                  "shuffled_class_top1": (s, c, n), "region_counts": (2, n), "region_top1": (2, n),
                  "region_tokens": (2,), "shuffled_region_top1": (s, 2, n), "position_counts": (t, n),
                  "position_top1": (t, n), "coselect": (n, n), "totals": (3,)}
        self.arrays = {name: np.zeros(shape, dtype=np.float64) for name, shape in shapes.items()}
        nb = (self.size + 7) // 8
        self.sets = SetTable(nb, 1 + s, c)
        self.sample = (np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros((0, nb), np.uint8))

    # --------------------------------------------------------------------------------------- update
    def update(self, assign: torch.Tensor, labels: np.ndarray, shuffled_labels: np.ndarray,
               regions: np.ndarray | None, shuffled_regions: np.ndarray | None, indices: np.ndarray) -> None:
        """Add one batch.

        Args:
            assign: ``[B, T, K]`` selected entries (int, any device).
            labels: ``[B]`` class labels; ``shuffled_labels``: ``[S, B]``.
            regions: ``[B, T]`` bool object mask, or None (no boxes, or the CLS pool);
                ``shuffled_regions``: ``[S, B, T]`` or None.
            indices: ``[B]`` global dataset indices of the images.
        """
        a = self.arrays
        assign = assign.detach().to("cpu", torch.long)
        b, t, k = assign.shape
        n = self.size
        hot_t = torch.zeros(b, t, n, dtype=torch.float32).scatter_(-1, assign, 1.0)
        top_t = torch.zeros(b, t, n, dtype=torch.float32).scatter_(-1, assign[..., :1], 1.0)
        ranks = (torch.arange(k) * n).view(1, 1, k) + assign
        a["rank_counts"] += torch.bincount(ranks.flatten(), minlength=k * n).view(k, n).double().numpy()
        eye = torch.eye(self.num_classes, dtype=torch.float32)
        onehot = eye[torch.as_tensor(labels, dtype=torch.long)]
        per_image, top_image = hot_t.sum(1), top_t.sum(1)
        shuffled_hot = eye[torch.as_tensor(shuffled_labels, dtype=torch.long)]  # [S, B, C]
        batch = {"class_counts": onehot.T @ per_image, "class_top1": onehot.T @ top_image,
                 "class_tokens": onehot.sum(0) * t,
                 "shuffled_class_top1": shuffled_hot.transpose(1, 2) @ top_image,
                 "position_counts": hot_t.sum(0), "position_top1": top_t.sum(0)}
        if regions is not None:
            obj = torch.as_tensor(regions, dtype=torch.float32)
            weights = torch.stack([obj, 1.0 - obj])  # [2, B, T]
            shuffled = torch.as_tensor(shuffled_regions, dtype=torch.float32)
            batch["region_counts"] = torch.einsum("rbt,btn->rn", weights, hot_t)
            batch["region_top1"] = torch.einsum("rbt,btn->rn", weights, top_t)
            batch["region_tokens"] = weights.sum((1, 2))
            batch["shuffled_region_top1"] = torch.stack(
                [torch.einsum("sbt,btn->sn", shuffled, top_t), torch.einsum("sbt,btn->sn", 1.0 - shuffled, top_t)], 1)
        flat = hot_t.reshape(-1, n)
        batch["coselect"] = flat.T @ flat
        for name, value in batch.items():
            a[name] += value.double().numpy()
        within = 0.0
        if t > 1:
            hot64 = hot_t.double()
            inter = hot64 @ hot64.transpose(1, 2)
            size = hot64.sum(-1)
            union = size[:, :, None] + size[:, None, :] - inter
            jac = torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(inter))
            within = float(((jac.sum((1, 2)) - jac.diagonal(dim1=1, dim2=2).sum(-1)) / (t * (t - 1))).sum())
        a["totals"] += (b, b * t, within)
        packed = np.packbits(hot_t.bool().numpy().reshape(-1, n), axis=-1)
        token_labels = np.repeat(np.stack([labels, *shuffled_labels]), t, axis=1)
        self.sets.add(packed, token_labels, self.num_classes)
        if t == 1:
            self._sample(packed, np.asarray(indices, dtype=np.int64))

    def _sample(self, packed: np.ndarray, indices: np.ndarray) -> None:
        prio = _splitmix64(indices.astype(np.uint64) ^ np.uint64(self.seed))
        self.merge_sample((prio, indices, packed))

    def merge(self, other: PoolCounts) -> None:
        """Add the counts of another shard (same layer, pool and sizes)."""
        for name, value in other.arrays.items():
            self.arrays[name] += value
        self.sets.merge(other.sets)
        self.merge_sample(other.sample)

    def merge_sample(self, sample: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
        """Combine the bounded Jaccard sample with another shard's ``(priorities, indices, packed sets)``."""
        if sample is None:
            return
        mine = self.sample
        self.sample = _bottom_k((np.concatenate([mine[0], sample[0]]), np.concatenate([mine[1], sample[1]]),
                                 np.concatenate([mine[2], sample[2]])), self.jaccard_sample)

    # --------------------------------------------------------------------------------------- derived
    @property
    def num_images(self) -> int:
        return int(self.arrays["totals"][0])

    @property
    def num_tokens(self) -> int:
        return int(self.arrays["totals"][1])

    @property
    def selected(self) -> np.ndarray:
        return self.arrays["rank_counts"].sum(0)

    @property
    def top1(self) -> np.ndarray:
        return self.arrays["rank_counts"][0]

    @property
    def rank_weighted(self) -> np.ndarray:
        return rank_weights(self.topk) @ self.arrays["rank_counts"]

    @property
    def has_regions(self) -> bool:
        return bool(self.arrays["region_tokens"].sum() > 0)


def _bottom_k(sample: tuple[np.ndarray, ...], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prio, idx, rows = sample
    order = np.lexsort((idx, prio))[:k]
    return prio[order], idx[order], rows[order]


def jaccard_from_counts(set_counts: dict[bytes, int], pool_size: int) -> float:
    """Exact mean Jaccard similarity over all pairs of tokens, from the multiplicities of the distinct sets."""
    keys = list(set_counts)
    m = np.asarray([set_counts[k] for k in keys], dtype=np.float64)
    total = m.sum()
    if total < 2:
        return float("nan")
    hot = np.stack([np.unpackbits(np.frombuffer(k, np.uint8))[:pool_size] for k in keys]).astype(np.float64)
    inter = hot @ hot.T
    size = hot.sum(1)
    union = size[:, None] + size[None, :] - inter
    jac = np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)
    pair_weight = np.outer(m, m) - np.diag(m)  # ordered pairs of distinct tokens
    return float((jac * pair_weight).sum() / (total * (total - 1)))


def jaccard_of_sample(rows: np.ndarray, pool_size: int) -> float:
    """Mean pairwise Jaccard similarity of the packed sets ``rows`` [R, W] (all pairs i < j)."""
    counts = count_rows(rows)
    return jaccard_from_counts(counts, pool_size)


def random_jaccard(pool_size: int, topk: int) -> float:
    """Expected Jaccard similarity of two independent uniformly random ``topk``-subsets of ``pool_size``
    entries: ``E[c / (2K - c)]`` with ``c`` hypergeometric (the no-preference reference)."""
    from scipy.stats import hypergeom

    c = np.arange(0, topk + 1)
    p = hypergeom(pool_size, topk, topk).pmf(c)
    return float((p * c / (2 * topk - c)).sum())


def expected_distinct_random(pool_size: int, topk: int, tokens: int) -> float:
    """Expected number of distinct sets among ``tokens`` uniformly random ``topk``-subsets."""
    total = math.comb(pool_size, topk)
    return float(total * -math.expm1(tokens * math.log1p(-1.0 / total))) if total > 1 else 1.0


def normalized_entropy(counts: np.ndarray) -> float:
    """Shannon entropy of ``counts / sum`` divided by ``log(len(counts))``; NaN for all-zero counts."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    total = counts.sum()
    if total <= 0 or len(counts) < 2:
        return float("nan") if total <= 0 else 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(len(counts))) + 0.0


def entropy_bits(counts: Any) -> float:
    """Shannon entropy in bits of a count vector."""
    c = np.asarray(list(counts), dtype=np.float64)
    c = c[c > 0]
    if c.size == 0:
        return float("nan")
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0
