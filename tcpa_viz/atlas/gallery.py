"""Per-entry galleries: the top-N (image, token) pairs by key similarity, kept in a bounded buffer.

:class:`GalleryBuffer` holds, for every entry of one pool of one block, the ``size`` highest cosine
similarities seen so far between a token and the entry's key (``sim`` / ``cls_sim`` hook points), with the
image index, the patch (``-1`` for the CLS token) and the rank at which that token selected the entry
(``-1``: not selected). Memory is ``O(entries x size)`` whatever the dataset size. Ties are broken by the
lower image index, then the lower patch, so the result does not depend on batching or sharding.

:func:`gallery_crops` cuts the pictures: the patch with one patch of context on each side (the whole image
for CLS entries), resized to a common size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image


@dataclass
class GalleryBuffer:
    """Top-``size`` tokens per entry. Arrays ``[N, size]``: ``score`` (cosine similarity, ``-inf`` = empty slot),
    ``image`` (global index), ``patch`` (row-major patch index, ``-1`` = CLS token), ``rank`` (selection rank,
    ``-1`` = not selected)."""

    entries: int
    size: int
    score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    image: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    patch: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        if self.score.ndim == 1:
            shape = (self.entries, 0)
            self.score, self.image = np.zeros(shape), np.zeros(shape, np.int64)
            self.patch, self.rank = np.zeros(shape, np.int64), np.zeros(shape, np.int64)

    def update(self, sim: torch.Tensor, indices: np.ndarray, assign: torch.Tensor, is_cls: bool) -> None:
        """Add a batch: ``sim`` ``[B, T, N]``, ``indices`` ``[B]`` global image indices, ``assign`` ``[B, T, K]``."""
        b, t, n = sim.shape
        flat = sim.detach().float().cpu().reshape(b * t, n)
        keep = min(self.size, b * t)
        threshold = flat.topk(keep, dim=0).values[-1]
        tok, ent = torch.nonzero(flat >= threshold, as_tuple=True)
        chosen = assign.detach().cpu().long().reshape(b * t, -1)[tok] == ent[:, None]
        rank = torch.where(chosen.any(-1), chosen.float().argmax(-1), torch.full_like(ent, -1))
        tok_np = tok.numpy()
        self._merge(ent.numpy(), flat[tok, ent].double().numpy(), np.asarray(indices, np.int64)[tok_np // t],
                    np.full(len(tok_np), -1) if is_cls else tok_np % t, rank.numpy())

    def merge(self, other: GalleryBuffer) -> None:
        """Combine with another shard's buffer."""
        rows = np.repeat(np.arange(other.entries), other.score.shape[1])
        self._merge(rows, other.score.ravel(), other.image.ravel(), other.patch.ravel(), other.rank.ravel())

    def _merge(self, ent: np.ndarray, score: np.ndarray, image: np.ndarray, patch: np.ndarray,
               rank: np.ndarray) -> None:
        own = np.repeat(np.arange(self.entries), self.score.shape[1])
        ent = np.concatenate([own, ent])
        score = np.concatenate([self.score.ravel(), score])
        image = np.concatenate([self.image.ravel(), image])
        patch = np.concatenate([self.patch.ravel(), patch])
        rank = np.concatenate([self.rank.ravel(), rank])
        valid = np.isfinite(score)
        ent, score, image, patch, rank = ent[valid], score[valid], image[valid], patch[valid], rank[valid]
        order = np.lexsort((patch, image, -score, ent))
        ent, score, image, patch, rank = ent[order], score[order], image[order], patch[order], rank[order]
        starts = np.searchsorted(ent, np.arange(self.entries))
        pos = np.arange(len(ent)) - starts[ent]
        keep = pos < self.size
        width = int(min(self.size, np.bincount(ent, minlength=self.entries).max(initial=0)))
        shape = (self.entries, width)
        self.score = np.full(shape, -np.inf)
        self.image, self.patch, self.rank = (np.full(shape, -1, np.int64) for _ in range(3))
        for target, values in ((self.score, score), (self.image, image), (self.patch, patch), (self.rank, rank)):
            target[ent[keep], pos[keep]] = values[keep]

    def records(self, entry: int, grid: tuple[int, int]) -> list[dict[str, object]]:
        """JSON-ready gallery of one entry, best first: ``image``, ``patch`` (index), ``row``/``col`` (patch grid
        position, None for CLS), ``similarity``, ``rank`` (-1 = the token did not select the entry)."""
        out: list[dict[str, object]] = []
        for s, i, p, r in zip(self.score[entry], self.image[entry], self.patch[entry], self.rank[entry],
                              strict=True):
            if not np.isfinite(s):
                continue
            out.append({"image": int(i), "patch": int(p), "row": int(p // grid[1]) if p >= 0 else None,
                        "col": int(p % grid[1]) if p >= 0 else None, "similarity": float(s), "rank": int(r)})
        return out


def gallery_crops(buffer: GalleryBuffer, image_of: Callable[[int], np.ndarray], grid: tuple[int, int],
                  crop_size: int = 48, context: int = 1) -> np.ndarray:
    """``uint8 [N, size, crop_size, crop_size, 3]`` crops of every gallery slot (black where a slot is empty).

    ``image_of(index)`` returns the model-input picture of an image as ``uint8 [H, W, 3]``; a patch crop spans
    ``context`` patches on each side of the patch (clipped at the border), a CLS slot is the whole image.
    """
    n, g = buffer.score.shape
    out = np.zeros((n, g, crop_size, crop_size, 3), dtype=np.uint8)
    cache: dict[int, np.ndarray] = {}
    for e in range(n):
        for j in range(g):
            index = int(buffer.image[e, j])
            if index < 0:
                continue
            if index not in cache:
                cache[index] = image_of(index)
            picture = cache[index]
            patch = int(buffer.patch[e, j])
            if patch >= 0:
                h, w = grid
                ph, pw = picture.shape[0] / h, picture.shape[1] / w
                r, c = divmod(patch, w)
                y0, y1 = int(max(0, r - context) * ph), int(min(h, r + context + 1) * ph)
                x0, x1 = int(max(0, c - context) * pw), int(min(w, c + context + 1) * pw)
                picture = picture[y0:y1, x0:x1]
            out[e, j] = np.asarray(Image.fromarray(picture).resize((crop_size, crop_size), Image.Resampling.NEAREST))
    return out
