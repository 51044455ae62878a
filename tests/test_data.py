"""tcpa_core.data: procedural generator, digits demo task, on-disk loaders, transforms, image loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_digits

from tcpa_core.backbone import DEMO_MEAN, DEMO_STD
from tcpa_core.data import (
    DigitsOnClutter,
    LabeledDataset,
    ProceduralGlyphs,
    build_dataset,
    build_transforms,
    data_config,
    digit_split_indices,
    glyph_templates,
    load_image,
    render_digit,
    to_normalized_tensor,
)
from tcpa_core.data.datasets import _wrap_torchvision
from tcpa_core.errors import DatasetError, EmptyDatasetError, ImageFormatError

DEMO_CFG = {"input_size": (3, 64, 64), "mean": DEMO_MEAN, "std": DEMO_STD, "interpolation": "bilinear",
            "crop_pct": 1.0}


def _denormalise(t: torch.Tensor) -> torch.Tensor:
    return t * torch.tensor(DEMO_STD).view(3, 1, 1) + torch.tensor(DEMO_MEAN).view(3, 1, 1)


# --- procedural pretraining data ---------------------------------------------------------------------------

def test_procedural_is_deterministic_per_seed_split_and_index():
    a = ProceduralGlyphs(100, seed=3, num_classes=16)
    b = ProceduralGlyphs(100, seed=3, num_classes=16)
    assert np.array_equal(a.raw_image(7), b.raw_image(7))
    assert torch.equal(a[7][0], b[7][0])
    assert not np.array_equal(a.raw_image(7), a.raw_image(8))
    assert not np.array_equal(a.raw_image(7), ProceduralGlyphs(100, seed=4, num_classes=16).raw_image(7))
    other_split = ProceduralGlyphs(100, seed=3, split="val", num_classes=16)
    assert not np.array_equal(a.raw_image(7), other_split.raw_image(7))


def test_procedural_sample_shapes_ranges_and_labels():
    ds = ProceduralGlyphs(40, seed=0, num_classes=8)
    raw = ds.raw_image(5)
    assert raw.shape == (64, 64, 3) and raw.dtype == np.uint8
    assert raw.std() > 5  # not a blank canvas
    image, label = ds[5]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    back = _denormalise(image)
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    assert torch.allclose(back, torch.from_numpy(raw).permute(2, 0, 1).float() / 255, atol=1e-5)
    assert label == 5 % 8 and ds.targets == [i % 8 for i in range(40)]
    assert len(ds) == 40 and len(ds.classes) == 8
    with pytest.raises(IndexError):
        ds.raw_image(40)


def test_procedural_transform_receives_pil_image():
    seen = []
    ds = ProceduralGlyphs(4, transform=lambda img: seen.append(img) or img.size)
    assert ds[0][0] == (64, 64) and isinstance(seen[0], Image.Image) and seen[0].mode == "RGB"


def test_curriculum_ramps_difficulty_and_easy_glyphs_are_centred():
    ds = ProceduralGlyphs(100, num_classes=8, curriculum=50)
    assert [ds.difficulty_of(i) for i in (0, 25, 50, 99)] == [0.0, 0.5, 1.0, 1.0]
    easy = ProceduralGlyphs(12, num_classes=8, difficulty=0.0, return_ink=True)
    for i in range(12):
        _, label, ink = easy[i]
        assert ink.shape == (64, 64) and ink.dtype == torch.float32 and 0 <= ink.min() and ink.max() <= 1
        ys, xs = torch.nonzero(ink > 0.3, as_tuple=True)
        assert abs((xs.min() + xs.max()).item() / 2 - 31.5) <= 2
        assert abs((ys.min() + ys.max()).item() / 2 - 31.5) <= 2 and label == i % 8
    hard = ProceduralGlyphs(40, num_classes=8, return_ink=True)
    centres = [torch.nonzero(hard[i][2] > 0.3).float().mean(0) for i in range(40)]
    assert torch.stack(centres).std(0).min() > 4  # full difficulty places glyphs all over the canvas


def test_glyph_classes_are_fixed_and_depend_on_glyph_seed():
    first, again, other = glyph_templates(6, 0), glyph_templates(6, 0), glyph_templates(6, 1)
    assert all(2 <= len(strokes) <= 3 for strokes in first)
    pairs = [(s, t) for a, b in zip(first, again, strict=True) for s, t in zip(a, b, strict=True)]
    assert all(np.array_equal(s, t) for s, t in pairs)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    # the same class at two indices is the same figure under different nuisances, not the same image
    ds = ProceduralGlyphs(64, num_classes=8)
    assert ds.label(1) == ds.label(9) and not np.array_equal(ds.raw_image(1), ds.raw_image(9))


# --- digits demo task --------------------------------------------------------------------------------------

def test_digit_splits_are_disjoint_complete_and_stratified():
    parts = {s: digit_split_indices(s, seed=0) for s in ("train", "val", "test")}
    sets = {s: set(v.tolist()) for s, v in parts.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert set().union(*sets.values()) == set(range(1797))
    targets = load_digits().target
    for idx in parts.values():
        counts = np.bincount(targets[idx], minlength=10)
        assert counts.min() > 0
    assert 0.55 < len(parts["train"]) / 1797 < 0.65
    assert np.array_equal(parts["val"], digit_split_indices("val", seed=0))
    assert not np.array_equal(parts["val"], digit_split_indices("val", seed=1))


def test_digits_datasets_share_no_source_digit():
    val = DigitsOnClutter("val", seed=0, max_sources=80)
    test = DigitsOnClutter("test", seed=0, max_sources=80)
    assert not set(val.source_indices.tolist()) & set(test.source_indices.tolist())
    assert val.source_indices.tolist() == digit_split_indices("val", 0)[:80].tolist()
    assert torch.equal(val.labels, torch.from_numpy(load_digits().target[val.source_indices.numpy()]))
    assert len(set(val.labels.tolist())) == 10


def test_digit_box_matches_drawn_ink_on_a_blank_canvas():
    bunch = load_digits()
    grey = np.full((64, 64, 3), 0.5, dtype=np.float32)
    for i in range(25):
        rng = np.random.default_rng([11, i])
        image, _, (x0, y0, x1, y1) = render_digit(rng, bunch.images[i], 64, background=grey)
        diff = np.abs(image.astype(np.float32) / 255 - grey).max(axis=2)
        ink = diff > 0.25 * diff.max()
        ys, xs = np.nonzero(ink)
        # the box is the tight box of the ink (1 px tolerance for uint8 rounding at the threshold)
        assert abs(xs.min() - x0) <= 1 and abs(ys.min() - y0) <= 1
        assert abs(xs.max() + 1 - x1) <= 1 and abs(ys.max() + 1 - y1) <= 1
        strong = diff > 0.5 * diff.max()
        outside = strong.copy()
        outside[y0:y1, x0:x1] = False
        assert not outside.any()
        assert 12 <= y1 - y0 <= 44 and 4 <= x1 - x0 <= 44


def test_digits_dataset_items_boxes_and_copies():
    n = 50
    ds = DigitsOnClutter("val", seed=0, samples_per_digit=2, max_sources=n)
    assert len(ds) == 2 * n and ds.boxes.shape == (2 * n, 4) and ds.boxes.dtype == torch.long
    x0, y0, x1, y1 = ds.boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 64).all() and (y1 <= 64).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    assert torch.equal(ds.source_indices[:n], ds.source_indices[n:])
    assert not np.array_equal(ds.raw_image(0), ds.raw_image(n))
    image, label = ds[3]
    assert image.shape == (3, 64, 64) and label == int(ds.labels[3])
    assert ds.classes == [str(d) for d in range(10)]
    assert np.array_equal(DigitsOnClutter("val", seed=0, max_sources=5).raw_image(3), ds.raw_image(3))
    # the ink box is where the digit differs from its surroundings: more contrast inside than around
    raw = ds.raw_image(3).astype(np.float32)
    bx0, by0, bx1, by1 = ds.boxes[3].tolist()
    assert raw[by0:by1, bx0:bx1].std() > 0


# --- on-disk datasets --------------------------------------------------------------------------------------

def _png(path: Path, mode: str = "RGB", size: tuple[int, int] = (20, 16), value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": (value, 30, 200), "L": value, "RGBA": (value, 30, 200, 128), "P": 3}[mode]
    Image.new(mode, size, colour).save(path)
    return path


def _image_folder(root: Path) -> Path:
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _png(root / split / cls / f"{i}.png", value=40 * i)
    return root


def test_imagefolder_splits_classes_and_transform(tmp_path):
    root = _image_folder(tmp_path / "folder")
    train = build_dataset("imagefolder", root, "trainval")
    assert train.classes == ["cat", "dog"] and sorted(train.targets) == [0] * 4 + [1] * 4
    image, label = train[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and label == 0
    test = build_dataset("imagefolder", root, "test", transform=build_transforms(DEMO_CFG, train=False))
    assert len(test) == 4 and test[0][0].shape == (3, 64, 64)
    # no val folder: val is a seeded slice of the train folder and train keeps the rest
    val = build_dataset("imagefolder", root, "val", val_fraction=0.25)
    kept = build_dataset("imagefolder", root, "train", val_fraction=0.25)
    trainval = build_dataset("imagefolder", root, "trainval")
    assert len(val) == 2 and len(kept) == 6 and not set(val.sources) & set(kept.sources)
    assert set(val.sources) | set(kept.sources) == set(trainval.sources) and len(trainval) == 8


def test_imagefolder_without_split_folders_is_carved(tmp_path):
    for cls in ("a", "b"):
        for i in range(10):
            _png(tmp_path / cls / f"{i}.png", value=10 * i)
    sizes = {s: len(build_dataset("imagefolder", tmp_path, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 16, "val": 2, "test": 2}


def test_image_modes_are_converted_to_rgb(tmp_path):
    root = tmp_path / "modes"
    _png(root / "train" / "grey" / "g.png", mode="L", value=77)
    _png(root / "train" / "rgba" / "r.png", mode="RGBA", value=200)
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.save(root / "train" / "rgba" / "p.png", transparency=0)
    ds = build_dataset("imagefolder", root, "train")
    images = [ds[i][0] for i in range(len(ds))]
    assert all(img.mode == "RGB" for img in images)
    by_class = {ds.classes[t]: img for img, t in zip(images, ds.targets, strict=True)}
    assert np.asarray(by_class["grey"])[0, 0].tolist() == [77, 77, 77]
    # half-transparent colour composited over white: 0.5 * colour + 0.5 * 255 (+-1 rounding)
    rgba = np.asarray(load_image(root / "train" / "rgba" / "r.png"))[0, 0].astype(int)
    assert np.abs(rgba - np.array([227, 142, 227])).max() <= 1
    assert np.asarray(load_image(root / "train" / "rgba" / "p.png"))[0, 0].tolist() == [255, 255, 255]
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    sixteen.save(tmp_path / "deep.png")
    assert np.asarray(load_image(tmp_path / "deep.png"))[0, 0].tolist() == [255, 255, 255]


def _vpt_dir(root: Path, images: str = "images") -> Path:
    splits = {
        "train": {"a/0.png": 7, "a/1.png": 7, "b/0.png": 3}, "val": {"b/1.png": 3}, "test": {"a/2.png": 7},
    }
    for split, anno in splits.items():
        for rel in anno:
            _png(root / images / rel)
        (root / f"{split}.json").write_text(json.dumps(anno))
    return root


def test_vpt_json_splits_and_contiguous_labels(tmp_path):
    root = _vpt_dir(tmp_path / "cub")
    train = build_dataset("cub", root, "train")
    assert len(train) == 3 and train.classes == ["3", "7"] and train.targets == [1, 1, 0]
    assert train[2][0].mode == "RGB"
    assert len(build_dataset("cub", root, "trainval")) == 4
    assert build_dataset("vpt-json", root, "test").targets == [1]
    dogs = _vpt_dir(tmp_path / "dogs", images="Images")
    assert len(build_dataset("stanford-dogs", dogs, "val")) == 1
    with pytest.raises(DatasetError, match="Image folder"):
        build_dataset("cub", dogs, "train")


def test_vpt_json_missing_malformed_and_empty(tmp_path):
    root = _vpt_dir(tmp_path / "cub")
    (root / "test.json").unlink()
    with pytest.raises(DatasetError, match="test.json"):
        build_dataset("cub", root, "test")
    (root / "val.json").write_text('{"a/0.png": "seven"}')
    with pytest.raises(DatasetError, match="integer labels"):
        build_dataset("cub", root, "val")
    (root / "val.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        build_dataset("cub", root, "val")
    (root / "val.json").write_text("{}")
    (root / "train.json").write_text("{}")
    with pytest.raises(EmptyDatasetError):
        build_dataset("cub", root, "train")


def test_missing_torchvision_dataset_says_where_and_how(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py") as info:
        build_dataset("cifar10", tmp_path, "train")
    assert str(tmp_path) in str(info.value) and "download" in str(info.value)
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset("svhn", tmp_path / "nowhere", "test")
    with pytest.raises(DatasetError, match="Unknown dataset"):
        build_dataset("imagenet-42", tmp_path, "train")
    with pytest.raises(DatasetError, match="root folder"):
        build_dataset("cifar100", None, "train")
    with pytest.raises(DatasetError, match="Unknown split"):
        build_dataset("digits", None, "dev")


def test_empty_image_folder_raises_empty_dataset_error(tmp_path):
    with pytest.raises(EmptyDatasetError):
        build_dataset("imagefolder", tmp_path, "train")
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(EmptyDatasetError, match="no samples"):
        build_dataset("imagefolder", tmp_path, "train")


def test_corrupt_image_in_dataset_names_the_file(tmp_path):
    root = _image_folder(tmp_path / "folder")
    bad = root / "train" / "cat" / "0.png"
    bad.write_bytes(b"this is not a png")
    ds = build_dataset("imagefolder", root, "trainval")  # the whole train folder, in file order
    with pytest.raises(ImageFormatError, match="0.png"):
        ds[0]
    good = (root / "train" / "cat" / "1.png").read_bytes()
    (root / "train" / "cat" / "2.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageFormatError, match="truncated or corrupt"):
        ds[2]
    assert ds[1][0].size == (20, 16)


def test_labeled_dataset_over_in_memory_base_is_picklable_and_subsettable():
    base = [(Image.new("L", (5, 5), 10 * i), i % 3) for i in range(6)]
    ds = LabeledDataset("toy", list(range(6)), [t for _, t in base], ["a", "b", "c"], base=base)
    sub = pickle.loads(pickle.dumps(ds.subset([4, 1])))
    assert len(sub) == 2 and sub.targets == [1, 1] and sub.classes == ["a", "b", "c"]
    image, label = sub[0]
    assert image.mode == "RGB" and np.asarray(image)[0, 0].tolist() == [40, 40, 40] and label == 1
    with pytest.raises(DatasetError):
        LabeledDataset("toy", [0, 1], [0], ["a"])


class _FakeFileDataset:
    """Mimics torchvision's file-backed datasets (DTD, Flowers102, Food101): ``_image_files``/``_labels``."""

    def __init__(self, files: list[Path], labels: list[int]) -> None:
        self._image_files, self._labels, self.classes = files, labels, ["x", "y"]

    def __len__(self) -> int:
        return len(self._image_files)


class _FakeArrayDataset:
    """Mimics torchvision's in-memory datasets (SVHN): ``labels`` and items ``(PIL image, label)``."""

    labels = np.array([0, 2, 1])

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.new("L", (4, 4), 50 * i), int(self.labels[i])


def test_torchvision_wrapping_reads_files_safely_and_infers_classes(tmp_path):
    files = [_png(tmp_path / "a.png"), tmp_path / "broken.jpg"]
    files[1].write_bytes(b"\xff\xd8 truncated")
    wrapped = _wrap_torchvision("dtd", _FakeFileDataset(files, [1, 0]))
    assert wrapped.targets == [1, 0] and wrapped.classes == ["x", "y"] and wrapped[0][0].mode == "RGB"
    with pytest.raises(ImageFormatError, match="broken.jpg"):
        wrapped[1]
    arrays = _wrap_torchvision("svhn", _FakeArrayDataset())
    assert arrays.classes == ["0", "1", "2"] and arrays.targets == [0, 2, 1]
    assert np.asarray(arrays[2][0])[0, 0].tolist() == [100, 100, 100]


def test_digits_through_build_dataset():
    ds = build_dataset("digits", split="test", seed=0, max_sources=20)
    assert isinstance(ds, DigitsOnClutter)
    assert ds.source_indices.tolist() == digit_split_indices("test", 0)[:20].tolist()
    with pytest.raises(DatasetError):
        build_dataset("digits", split="trainval")


# --- image loading and transforms --------------------------------------------------------------------------

def test_load_image_refuses_decompression_bombs(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("L", (3000, 3000), 0).save(big)
    assert big.stat().st_size < 100_000
    with pytest.raises(ImageFormatError, match="pixels"):
        load_image(big, max_pixels=1_000_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    with pytest.raises(ImageFormatError, match="too large"):
        load_image(big, max_pixels=10**9)
    monkeypatch.undo()
    assert load_image(big).size == (3000, 3000)


def test_load_image_sources_and_errors(tmp_path):
    path = _png(tmp_path / "x.png", mode="L", value=9)
    assert load_image(path.read_bytes()).mode == "RGB"
    with path.open("rb") as fh:
        assert np.asarray(load_image(fh))[0, 0].tolist() == [9, 9, 9]
    with pytest.raises(ImageFormatError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(ImageFormatError, match="not an image"):
        load_image(tmp_path / "t.png")


def test_transforms_follow_the_backbone_config():
    model = timm.create_model("tcpa_demo_vit", pretrained=False)
    cfg = data_config(model)
    assert cfg["input_size"] == (3, 64, 64) and cfg["mean"] == DEMO_MEAN and cfg["std"] == DEMO_STD
    mean_colour = tuple(int(round(m * 255)) for m in DEMO_MEAN)
    image = Image.new("RGB", (100, 80), mean_colour)
    out = build_transforms(model, train=False)(image)
    assert out.shape == (3, 64, 64) and out.abs().max() < 0.02
    torch.manual_seed(0)
    noise = np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8)
    aug = build_transforms(cfg, train=True)(Image.fromarray(noise))
    assert aug.shape == (3, 64, 64)
    crop = build_transforms({"input_size": (3, 32, 32)}, train=True, random_resized_crop=False, hflip=False)
    assert crop(image).shape == (3, 32, 32)
    with pytest.raises(ValueError):
        data_config({"input_size": (1, 32, 32)})


def test_to_normalized_tensor_values_and_validation():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[..., 0] = 255
    out = to_normalized_tensor(image, DEMO_MEAN, DEMO_STD)
    assert out.shape == (3, 2, 3)
    assert torch.allclose(out[0], torch.full((2, 3), 2.0))
    assert torch.allclose(out[1], torch.full((2, 3), -2.0))
    with pytest.raises(ValueError):
        to_normalized_tensor(image.astype(np.float32), DEMO_MEAN, DEMO_STD)
