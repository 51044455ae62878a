"""Dataset plumbing of the atlas: labels, object boxes in model-input pixels, object patches, shards.

The atlas reads a dataset of ``(image tensor [C, H, W], label)`` samples (already transformed for the
model). Labels and boxes are read once up front from the dataset's attributes (``targets`` / ``labels``,
``boxes``), through ``torch.utils.data.Subset`` wrappers, without decoding images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from tcpa_core.data.datasets import dataset_size
from tcpa_core.distributed import get_rank, get_world_size, shard_indices
from tcpa_core.errors import DatasetError, EmptyDatasetError
from tcpa_core.model import PromptedViT


def _base(data: Dataset, index: int) -> tuple[Dataset, int]:
    while isinstance(data, Subset):
        data, index = data.dataset, int(data.indices[index])  # type: ignore[attr-defined]
    return data, index


def dataset_labels(data: Dataset) -> np.ndarray:
    """Class labels ``[N]`` int64 of every sample (from ``targets``/``labels``; decodes samples only when the
    dataset has neither)."""
    if isinstance(data, Subset):
        return dataset_labels(data.dataset)[np.asarray(data.indices, dtype=np.int64)]
    for name in ("targets", "labels"):
        values = getattr(data, name, None)
        if values is not None:
            return np.asarray(values.tolist() if torch.is_tensor(values) else list(values), dtype=np.int64)
    return np.asarray([int(data[i][1]) for i in range(dataset_size(data))], dtype=np.int64)


def _raw_size(base: Dataset, index: int) -> tuple[int, int]:
    size = getattr(base, "size", None)
    if isinstance(size, int):
        return size, size
    raw = getattr(base, "raw_image", None)
    if raw is not None:
        image = np.asarray(raw(index))
        return int(image.shape[0]), int(image.shape[1])
    raise DatasetError(f"{type(base).__name__} has boxes but neither a size nor raw_image(); cannot place them.")


def input_boxes(data: Dataset, model: PromptedViT) -> np.ndarray | None:
    """Ground-truth object boxes ``[N, 4]`` (x0, y0, x1, y1; ends exclusive) in model-input pixels, or ``None``
    when the dataset has no ``boxes`` attribute (e.g. every torchvision dataset).

    Raw-image boxes are mapped through the evaluation transform (resize to ``size / crop_pct``, centre crop).
    """
    from ..figures.common import box_to_input, pixel_boxes

    raw = pixel_boxes(data)
    if raw is None:
        return None
    out = np.empty((len(raw), 4), dtype=np.float64)
    for i, box in enumerate(raw):
        base, j = _base(data, i)
        out[i] = box_to_input(box, _raw_size(base, j), model)
    return out


def object_patches(boxes: np.ndarray, grid: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """``[B, h*w]`` bool: True for the patches whose centre lies inside the image's box ``[B, 4]``
    (input pixels). This is the atlas's definition of an object token; every other patch is background."""
    h, w = grid
    height, width = input_size
    cy = (np.arange(h) + 0.5) * height / h
    cx = (np.arange(w) + 0.5) * width / w
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    yy, xx = yy.ravel()[None], xx.ravel()[None]
    b = boxes[:, :, None]
    return (xx >= b[:, 0]) & (xx < b[:, 2]) & (yy >= b[:, 1]) & (yy < b[:, 3])


class _Indexed(Dataset):
    """``(image, label, index)`` of ``data`` at the given global indices."""

    def __init__(self, data: Dataset, indices: Sequence[int]) -> None:
        self.data, self.indices = data, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        index = self.indices[i]
        image, label = self.data[index][:2]
        return image, int(label), index


def shard_loader(data: Dataset, batch_size: int, num_workers: int = 0, device: torch.device | None = None
                 ) -> DataLoader:
    """Batches ``(images, labels, global indices)`` of this rank's strided shard (every index on exactly one
    rank; the whole dataset without ``torchrun``)."""
    if dataset_size(data) == 0:
        raise EmptyDatasetError("the dataset has no samples; check the split and --max-samples.")
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size}.")
    shard = shard_indices(dataset_size(data), get_rank(), get_world_size())
    pin = device is not None and device.type == "cuda"
    return DataLoader(_Indexed(data, shard), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin)
