"""Loaders for datasets already on disk, behind one entry point, :func:`build_dataset`.

Nothing is ever downloaded. Supported names:

- torchvision datasets read from ``root`` (the folder you would pass to torchvision): ``cifar10``,
  ``cifar100``, ``svhn``, ``gtsrb``, ``dtd``, ``flowers102``, ``food101``;
- ``imagefolder``: ``root/<split>/<class>/<image>`` (or, with no split folders, ``root/<class>/<image>``);
- the VPT JSON split format: ``vpt-json`` and its named variants ``cub``, ``nabirds``, ``stanford-dogs``,
  ``stanford-cars``, ``oxford-flowers`` (``root/{train,val,test}.json`` mapping image paths, relative to the
  dataset's image folder, to integer labels);
- ``digits``: the built-in demo task :class:`~tcpa_core.data.digits.DigitsOnClutter`.

Splits are ``train``, ``val``, ``test`` and ``trainval`` (train + val). Where a dataset has no official
validation split, ``val`` is a fixed, seeded ``val_fraction`` of the official training set and ``train``
the rest, so ``test`` is never needed for model selection. Every returned dataset yields
``(transform(PIL RGB image), int label)`` (the PIL image itself when ``transform`` is None; the digits task
returns a normalised tensor then) and has ``classes`` (list of names) and ``targets`` (list of ints).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd

from ..errors import DatasetError, EmptyDatasetError, ImageFormatError
from .digits import DigitsOnClutter
from .transforms import load_image

SPLITS = ("train", "val", "test", "trainval")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_TORCHVISION: dict[str, dict[str, Any]] = {
    "cifar10": {"cls": tvd.CIFAR10, "kind": "train_flag", "expects": "cifar-10-batches-py/",
                "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"},
    "cifar100": {"cls": tvd.CIFAR100, "kind": "train_flag", "expects": "cifar-100-python/",
                 "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"},
    "svhn": {"cls": tvd.SVHN, "kind": "split", "expects": "train_32x32.mat and test_32x32.mat",
             "url": "http://ufldl.stanford.edu/housenumbers/"},
    "gtsrb": {"cls": tvd.GTSRB, "kind": "split", "expects": "gtsrb/GTSRB/Training and gtsrb/GTSRB/Final_Test",
              "url": "https://benchmark.ini.rub.de/gtsrb_dataset.html"},
    "dtd": {"cls": tvd.DTD, "kind": "split_with_val", "expects": "dtd/dtd/images and dtd/dtd/labels",
            "url": "https://www.robots.ox.ac.uk/~vgg/data/dtd/"},
    "flowers102": {"cls": tvd.Flowers102, "kind": "split_with_val",
                   "expects": "flowers-102/jpg, imagelabels.mat and setid.mat",
                   "url": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"},
    "food101": {"cls": tvd.Food101, "kind": "split", "expects": "food-101/images and food-101/meta",
                "url": "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/"},
}

VPT_IMAGE_DIRS: dict[str, str] = {
    "cub": "images", "nabirds": "images", "stanford-dogs": "Images", "stanford-cars": "",
    "oxford-flowers": "",
}
"""Image folder (relative to the dataset root) that the paths in the VPT JSON files are relative to."""

DATASET_NAMES: tuple[str, ...] = (
    *_TORCHVISION, "imagefolder", "vpt-json", *VPT_IMAGE_DIRS, "digits",
)


class LabeledDataset(Dataset):
    """A uniform, picklable view over labelled images.

    ``sources[i]`` is either an image file (read with :func:`load_image`, so an unreadable file raises
    :class:`ImageFormatError` naming it) or an index into ``base``, a dataset whose items are
    ``(PIL image, label)``. ``targets`` ``[N]`` and ``classes`` are known without decoding any image;
    ``dataset[i]`` -> ``(transform(PIL RGB image), label)`` (the PIL image when ``transform`` is None).
    """

    def __init__(
        self,
        name: str,
        sources: Sequence[Path | int],
        targets: Sequence[int],
        classes: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        base: Dataset | None = None,
    ) -> None:
        if len(sources) != len(targets):
            raise DatasetError(f"{name}: {len(sources)} images but {len(targets)} labels.")
        self.name = name
        self.sources = list(sources)
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.transform = transform
        self.base = base

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Image.Image:
        """The RGB PIL image of sample ``index`` (before ``transform``)."""
        source = self.sources[index]
        if not isinstance(source, int):
            return load_image(source)
        if self.base is None:
            raise DatasetError(f"Sample {index} of {self.name} refers to a base dataset this one does not have.")
        try:
            return self.base[source][0].convert("RGB")
        except (OSError, ValueError) as exc:
            raise ImageFormatError(f"Sample {source} of {self.name} could not be decoded: {exc}") from exc

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load(index)
        return (self.transform(image) if self.transform is not None else image), self.targets[index]

    def subset(self, indices: Iterable[int]) -> LabeledDataset:
        """The samples ``indices`` (same classes, transform and base)."""
        idx = [int(i) for i in indices]
        return LabeledDataset(self.name, [self.sources[i] for i in idx], [self.targets[i] for i in idx],
                              self.classes, self.transform, self.base)


def build_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    transform: Callable[[Image.Image], Any] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    **kwargs: Any,
) -> Dataset:
    """Open dataset ``name`` (see the module docstring) from ``root`` for ``split``.

    ``kwargs`` go to :class:`DigitsOnClutter` for ``digits`` (e.g. ``samples_per_digit``, ``max_sources``);
    the VPT JSON names take ``image_dir``, the folder the JSON paths are relative to (default: per dataset
    as in :data:`VPT_IMAGE_DIRS`; for ``vpt-json`` ``root/images`` if it exists, else ``root``). Use the
    same ``val_fraction`` and ``seed`` for every split of one experiment: they define the train/val carve.
    Raises :class:`DatasetError` when files are missing or malformed, :class:`EmptyDatasetError` when the
    split has no samples.
    """
    key = name.lower().replace("_", "-")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0.0 < val_fraction < 1.0:
        raise DatasetError(
            f"val_fraction (--val-fraction) must be a number in (0, 1), the share of the training set held out "
            f"for validation; got {val_fraction!r}."
        )
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if key == "digits":
        if split == "trainval":
            raise DatasetError("The digits demo task has the splits train, val and test (no trainval).")
        return DigitsOnClutter(split=split, seed=seed, transform=transform, **kwargs)
    if key not in DATASET_NAMES:
        raise DatasetError(f"Unknown dataset {name!r}; available: {', '.join(DATASET_NAMES)}.")
    if root is None:
        raise DatasetError(f"Dataset {name!r} is read from disk: pass its root folder (--data-root DIR).")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"Dataset root {root} does not exist or is not a folder; {_how_to_get(key, root)}")
    if kwargs and key != "vpt-json" and key not in VPT_IMAGE_DIRS:
        raise DatasetError(f"Unexpected options {sorted(kwargs)} for dataset {name!r}.")
    if key in _TORCHVISION:
        data = _torchvision_split(key, root, split, val_fraction, seed)
    elif key == "imagefolder":
        data = _imagefolder_split(root, split, val_fraction, seed)
    else:
        data = _vpt_split(key, root, split, kwargs.get("image_dir"))
    if len(data) == 0:
        raise EmptyDatasetError(
            f"Split {split!r} of {name!r} under {root} has no samples; check that the images and split files "
            "are in place (see tcpa_core.data.datasets for the expected layout)."
        )
    data.transform = transform
    return data


class SampleSubset(Subset):
    """A :class:`torch.utils.data.Subset` that keeps the class names (``classes``) of its dataset."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, indices)
        self.classes: list[str] = [str(c) for c in getattr(dataset, "classes", [])]


def dataset_size(data: Dataset) -> int:
    """Number of samples of a map-style dataset (:class:`DatasetError` for one without ``__len__``)."""
    if not isinstance(data, Sized):
        raise DatasetError(f"{type(data).__name__} has no length; pass a map-style dataset (with __len__).")
    return len(data)


def limit_samples(data: Dataset, max_samples: int | None, seed: int = 0) -> Dataset:
    """The seeded random subset of at most ``max_samples`` samples (``--max-samples`` of ``tcpa-viz train`` /
    ``demo``: the sorted first ``max_samples`` indices of ``torch.randperm`` seeded with ``seed``), or ``data``
    itself when it is not larger. The subset keeps the dataset's ``classes``."""
    n = dataset_size(data)
    if max_samples is None or max_samples >= n:
        return data
    if max_samples < 1:
        raise DatasetError(f"max_samples (--max-samples) must be >= 1, got {max_samples}.")
    generator = torch.Generator().manual_seed(int(seed))
    return SampleSubset(data, sorted(torch.randperm(n, generator=generator)[:max_samples].tolist()))


def open_split(spec: Mapping[str, Any], split: str, transform: Callable[[Image.Image], Any] | None = None
               ) -> Dataset:
    """Split ``split`` of the dataset a run records as its ``dataset`` entry (``name``, ``root``, ``seed``,
    ``val_fraction``, ``options``, ``max_samples``; see :func:`build_dataset` and :func:`limit_samples`)."""
    seed = int(spec.get("seed") or 0)
    data = build_dataset(str(spec["name"]), spec.get("root"), split, transform,
                         val_fraction=float(spec.get("val_fraction", 0.1)), seed=seed,
                         **dict(spec.get("options") or {}))
    return limit_samples(data, spec.get("max_samples"), seed)


def _how_to_get(key: str, root: Path) -> str:
    if key in _TORCHVISION:
        info = _TORCHVISION[key]
        return (f"expected {info['expects']} under {root}. Download it from {info['url']} and extract it "
                f"there, or on a machine with internet run torchvision.datasets.{info['cls'].__name__}"
                f"({str(root)!r}, download=True) and copy the folder over.")
    if key == "imagefolder":
        return "an image folder needs root/<split>/<class>/<image> or root/<class>/<image>."
    return (f"the VPT JSON format needs {root}/train.json, val.json and test.json (image path -> integer "
            "label) and the images under the dataset root; the split files are published with the VPT "
            "benchmark.")


def _carve(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (train, val) index arrays over ``range(n)``."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    perm = np.random.default_rng([seed, 4099]).permutation(n)
    n_val = int(round(val_fraction * n)) if n > 1 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _wrap_torchvision(key: str, base: Any) -> LabeledDataset:
    """Expose a torchvision dataset as a LabeledDataset (image files read via load_image where known)."""
    sources: list[Any]
    if hasattr(base, "_image_files"):
        sources = [Path(p) for p in base._image_files]
    elif hasattr(base, "_samples"):
        sources = [Path(p) for p, _ in base._samples]
    else:
        sources = list(range(len(base)))
    for attr in ("targets", "labels", "_labels"):
        if hasattr(base, attr):
            targets = [int(t) for t in getattr(base, attr)]
            break
    else:
        targets = [int(t) for _, t in base._samples]
    classes = getattr(base, "classes", None) or [str(c) for c in range(max(targets, default=-1) + 1)]
    file_based = sources and not isinstance(sources[0], int)
    return LabeledDataset(key, sources, targets, classes, base=None if file_based else base)


def _open_torchvision(key: str, root: Path, split: str) -> LabeledDataset:
    info = _TORCHVISION[key]
    kwargs = {"train": split == "train"} if info["kind"] == "train_flag" else {"split": split}
    try:
        base = info["cls"](str(root), download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError, KeyError, ValueError) as exc:
        raise DatasetError(
            f"Could not open {key} ({split}) from {root}: {exc}. {_how_to_get(key, root)}"
        ) from exc
    return _wrap_torchvision(key, base)


def _torchvision_split(key: str, root: Path, split: str, val_fraction: float, seed: int) -> LabeledDataset:
    if _TORCHVISION[key]["kind"] == "split_with_val":
        if split == "trainval":
            return _concat(_open_torchvision(key, root, "train"), _open_torchvision(key, root, "val"))
        return _open_torchvision(key, root, split)
    if split == "test":
        return _open_torchvision(key, root, "test")
    full = _open_torchvision(key, root, "train")
    if split == "trainval":
        return full
    train_idx, val_idx = _carve(len(full), val_fraction, seed)
    return full.subset(train_idx if split == "train" else val_idx)


def _concat(first: LabeledDataset, second: LabeledDataset) -> LabeledDataset:
    """Two file-based datasets with the same classes, one after the other."""
    return LabeledDataset(first.name, first.sources + second.sources, first.targets + second.targets,
                          first.classes)


def _scan_classes(folder: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    files, targets = [], []
    for label, cls in enumerate(classes):
        cls_dir = folder / cls
        if not cls_dir.is_dir():
            continue
        for path in sorted(cls_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
                targets.append(label)
    return files, targets


def _imagefolder_split(root: Path, split: str, val_fraction: float, seed: int) -> LabeledDataset:
    """``root/<split>/<class>/*`` with classes shared by all split folders (without a ``val`` folder, val is
    a seeded ``val_fraction`` of ``train`` and ``train`` the rest); or one ``root/<class>/*`` tree carved
    into 80/10/10 train/val/test (seeded)."""
    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    tree_roots = list(split_dirs.values()) or [root]
    classes = sorted({p.name for d in tree_roots for p in d.iterdir() if p.is_dir()})
    if not classes:
        raise EmptyDatasetError(
            f"No class folders found under {root}; an image folder needs root/<split>/<class>/<image> or "
            "root/<class>/<image>."
        )

    def folder(path: Path) -> LabeledDataset:
        files, targets = _scan_classes(path, classes)
        return LabeledDataset("imagefolder", files, targets, classes)

    if not split_dirs:
        whole = folder(root)
        rest, test_idx = _carve(len(whole), 0.1, seed + 1)
        if split == "test":
            return whole.subset(test_idx)
        train_idx, val_idx = _carve(len(rest), 1.0 / 9.0, seed)
        chosen = {"train": rest[train_idx], "val": rest[val_idx], "trainval": rest}[split]
        return whole.subset(chosen)
    if split in split_dirs and (split != "train" or "val" in split_dirs):
        return folder(split_dirs[split])
    if "train" in split_dirs:
        train = folder(split_dirs["train"])
        if split == "trainval":
            return _concat(train, folder(split_dirs["val"])) if "val" in split_dirs else train
        if split in ("train", "val"):  # no val folder: carve val out of train, keep the rest for train
            train_idx, val_idx = _carve(len(train), val_fraction, seed)
            return train.subset(train_idx if split == "train" else val_idx)
    raise DatasetError(
        f"Image folder {root} has no {split!r} folder (found: {', '.join(split_dirs) or 'none'}); "
        f"add {root / split}/<class>/<image>."
    )


def _read_vpt_json(path: Path) -> dict[str, int]:
    try:
        anno = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"VPT split file {path} is not valid JSON ({exc}); re-create it.") from exc
    if not isinstance(anno, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in anno.items()
    ):
        raise DatasetError(
            f"VPT split file {path} must be a JSON object mapping image paths (strings) to integer labels."
        )
    return anno


def _vpt_split(key: str, root: Path, split: str, image_dir: str | Path | None) -> LabeledDataset:
    """VPT JSON format: labels of all split files are mapped to contiguous ids in sorted order."""
    if image_dir is not None:
        images = root / image_dir
    elif key in VPT_IMAGE_DIRS:
        images = root / VPT_IMAGE_DIRS[key]
    else:
        images = root / "images" if (root / "images").is_dir() else root
    if not images.is_dir():
        raise DatasetError(f"Image folder {images} of {key} not found; {_how_to_get(key, root)}")
    wanted = ("train", "val") if split == "trainval" else (split,)
    missing = [s for s in wanted if not (root / f"{s}.json").is_file()]
    if missing:
        raise DatasetError(f"VPT split file {root / missing[0]}.json not found; {_how_to_get(key, root)}")
    present = [s for s in ("train", "val", "test") if (root / f"{s}.json").is_file()]
    annos = {s: _read_vpt_json(root / f"{s}.json") for s in present}
    label_ids = sorted({v for anno in annos.values() for v in anno.values()})
    to_contiguous = {v: i for i, v in enumerate(label_ids)}
    files, targets = [], []
    for s in wanted:
        for rel, label in annos[s].items():
            files.append(images / rel)
            targets.append(to_contiguous[label])
    return LabeledDataset(key, files, targets, [str(v) for v in label_ids])
