"""Feature extraction over a dataset with an on-disk ``.npz`` cache.

A feature callable maps an image batch ``[batch, C, H, W]`` to features ``[batch, D]`` (e.g. a model's
pre-logits). Results are cached as ``<cache_dir>/<name>.npz`` (arrays ``features`` ``[N, D]`` float32 and
``labels`` ``[N]`` int64) and reused on later calls with the same name, so the name must identify both
the model and the data split.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from tcpa_core.checkpoint import atomic_write
from tcpa_core.data import dataset_size
from tcpa_core.errors import EmptyDatasetError

from .errors import AnalysisArgumentError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class FeatureSet:
    """Extracted features.

    Attributes:
        features: ``[N, D]`` float32.
        labels: ``[N]`` int64 class labels (-1 where the data gave none).
        name: cache name (``""`` when not cached).
        from_cache: whether the arrays were read from the cache instead of computed.
    """

    features: np.ndarray
    labels: np.ndarray
    name: str = ""
    from_cache: bool = False


def feature_cache_path(cache_dir: str | Path, name: str) -> Path:
    """Path of the cache file for ``name`` (letters, digits, ``.``, ``_``, ``-``; no path separators)."""
    if not _NAME_RE.match(name):
        raise AnalysisArgumentError(
            f"feature cache name {name!r} must start with a letter or digit and contain only letters, "
            "digits, '.', '_' or '-'"
        )
    return Path(cache_dir) / f"{name}.npz"


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        image = batch.get("image", batch.get("images"))
        label = batch.get("label", batch.get("labels"))
        if image is None:
            raise AnalysisArgumentError("a dict batch needs an 'image' (or 'images') entry")
        return image, label
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise AnalysisArgumentError(f"cannot read images from a batch of type {type(batch).__name__}")


def _load_cache(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["features"], data["labels"]


def _save_cache(path: Path, features: np.ndarray, labels: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.savez(handle, features=features, labels=labels))


def _iterate_batches(feature_fn: Callable[[torch.Tensor], torch.Tensor], loader: Iterable[Any],
                     device: str | torch.device | None, progress: bool, name: str | None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every batch of a loader or iterable (labels -1 where a batch has none)."""
    feats: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    with torch.inference_mode():
        for batch in tqdm(loader, total=total, desc=f"features {name or ''}".strip(), disable=not progress):
            images, batch_labels = _split_batch(batch)
            if device is not None:
                images = images.to(device)
            batch_features = feature_fn(images)
            out = batch_features.detach().float().cpu().reshape(batch_features.shape[0], -1).numpy()
            feats.append(out)
            if batch_labels is None:
                labs.append(np.full(out.shape[0], -1, dtype=np.int64))
            else:
                labs.append(np.asarray(torch.as_tensor(batch_labels).cpu(), dtype=np.int64).reshape(-1))
    if not feats:
        raise EmptyDatasetError("the data yielded no batches: there are no samples to extract features from")
    return np.concatenate(feats).astype(np.float32, copy=False), np.concatenate(labs)


def extract_features(
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    data: Dataset | DataLoader | Iterable[Any],
    name: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> FeatureSet:
    """Run ``feature_fn`` over ``data`` without gradients and stack the results, with an on-disk cache.

    A map-style dataset goes through :func:`tcpa_core.train.extract_features` (the one feature loop of the
    project, sharded under ``torchrun``); a ``DataLoader`` or other iterable is read batch by batch as given.

    Args:
        feature_fn: maps images ``[batch, C, H, W]`` to ``[batch, D]``.
        data: a map-style ``Dataset`` of ``(image, label)`` (batched here, in order), a ``DataLoader``, or
            any iterable of batches; a batch is ``(images, labels)``, ``{"image", "label"}`` or images.
        name: cache name; with ``cache_dir`` the result is cached as ``<cache_dir>/<name>.npz``.
        cache_dir: cache folder (``None``: no caching).
        batch_size, num_workers: DataLoader settings when ``data`` is a Dataset.
        device: where to move the images before calling ``feature_fn`` (``None``: leave them).
        progress: show a tqdm progress bar.
        overwrite: recompute even when the cache exists.

    A cache file is reused as is unless ``data`` has a length that differs from the cached count, in
    which case it is recomputed (with a warning) and overwritten.
    """
    path = feature_cache_path(cache_dir, name) if (cache_dir is not None and name) else None
    if cache_dir is not None and not name:
        raise AnalysisArgumentError("caching needs a name: pass name=... together with cache_dir")
    dataset = data if isinstance(data, Dataset) and not isinstance(data, IterableDataset) else None
    expected: int | None = None
    if dataset is not None:
        expected = dataset_size(dataset)
    elif isinstance(data, DataLoader) and hasattr(data.dataset, "__len__"):
        expected = dataset_size(data.dataset)
    if path is not None and path.is_file() and not overwrite:
        features, labels = _load_cache(path)
        if expected is None or expected == len(features):
            return FeatureSet(features, labels, name or "", from_cache=True)
        warnings.warn(
            f"feature cache {path.name} holds {len(features)} samples but the data has {expected}; recomputing",
            stacklevel=2,
        )
    if dataset is not None:
        from tcpa_core.train import extract_features as dataset_features

        computed = dataset_features(feature_fn, dataset, batch_size, device=device, num_workers=num_workers,
                                    progress=progress)
        features = computed[0].numpy().astype(np.float32, copy=False)
        labels_arr = computed[1].numpy().astype(np.int64, copy=False)
    else:
        features, labels_arr = _iterate_batches(feature_fn, cast(Iterable[Any], data), device, progress, name)
    if path is not None:
        _save_cache(path, features, labels_arr)
    return FeatureSet(features, labels_arr, name or "", from_cache=False)
