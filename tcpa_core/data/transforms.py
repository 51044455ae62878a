"""Image transforms derived from a timm backbone's data config, and safe loading of user images."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import resolve_data_config
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..errors import ImageFormatError

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest image (width * height) :func:`load_image` decodes by default (about 7000 x 7000)."""

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def data_config(model_or_config: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """Input size, mean, std, interpolation and crop fraction of a backbone.

    Accepts a timm model (its ``pretrained_cfg`` is read) or a mapping with any of the keys ``input_size``
    (``(3, H, W)``), ``mean``, ``std``, ``interpolation``, ``crop_pct``; missing keys get timm's defaults.
    Returns a dict with all five keys.
    """
    if isinstance(model_or_config, nn.Module):
        cfg = resolve_data_config(model=model_or_config)
    elif isinstance(model_or_config, Mapping):
        cfg = dict(model_or_config)
    else:
        raise TypeError(
            f"expected a timm model or a data-config mapping, got {type(model_or_config).__name__}"
        )
    input_size = tuple(cfg.get("input_size", (3, 224, 224)))
    if len(input_size) != 3 or input_size[0] != 3:
        raise ValueError(f"input_size must be (3, H, W), got {input_size}")
    return {
        "input_size": input_size,
        "mean": tuple(float(v) for v in cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        "std": tuple(float(v) for v in cfg.get("std", IMAGENET_DEFAULT_STD)),
        "interpolation": str(cfg.get("interpolation", "bicubic")),
        "crop_pct": float(cfg.get("crop_pct", 0.875) or 1.0),
    }


def build_transforms(
    model_or_config: nn.Module | Mapping[str, Any],
    train: bool,
    hflip: bool = True,
    random_resized_crop: bool = True,
    scale: tuple[float, float] = (0.5, 1.0),
) -> Callable[[Image.Image], torch.Tensor]:
    """Standard transforms for a backbone: PIL RGB image -> normalised float tensor ``[3, H, W]``.

    Train: random-resized crop (``scale`` of the area) or, with ``random_resized_crop=False``, resize to
    ``size / crop_pct`` then a random crop; then a random horizontal flip when ``hflip`` (turn it off for
    data where mirroring changes the class, such as digits). Eval: resize to ``size / crop_pct`` and a
    centre crop.
    """
    cfg = data_config(model_or_config)
    _, height, width = cfg["input_size"]
    interp = _INTERPOLATIONS.get(cfg["interpolation"], InterpolationMode.BICUBIC)
    resize_to = (int(round(height / cfg["crop_pct"])), int(round(width / cfg["crop_pct"])))
    steps: list[Callable[..., Any]] = []
    if train:
        if random_resized_crop:
            steps.append(T.RandomResizedCrop((height, width), scale=scale, interpolation=interp))
        else:
            steps += [T.Resize(resize_to, interpolation=interp), T.RandomCrop((height, width))]
        if hflip:
            steps.append(T.RandomHorizontalFlip())
    else:
        steps += [T.Resize(resize_to, interpolation=interp), T.CenterCrop((height, width))]
    steps += [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])]
    return T.Compose(steps)


def to_normalized_tensor(
    image: np.ndarray | Image.Image, mean: tuple[float, ...], std: tuple[float, ...],
) -> torch.Tensor:
    """uint8 RGB image ``[H, W, 3]`` (array or PIL) -> float ``[3, H, W]``: ``(x / 255 - mean) / std``."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {array.dtype} {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - m) / s


def _gray_to_uint8(image: Image.Image) -> np.ndarray:
    """A 16/32-bit integer or float single-channel image -> uint8 ``[H, W]`` with its intended brightness.

    ``I;16*`` (16-bit, e.g. 16-bit PNG/TIFF): full 16-bit range -> 0-255 (a dark 16-bit image stays dark).
    ``I`` (32-bit signed): values in 0-255 are taken as 8-bit, in 0-65535 as 16-bit, anything else (negative or
    larger values) is rescaled from its minimum..maximum. ``F`` (float): values in [0, 1] are taken as
    fractions, in [0, 255] as 8-bit levels, anything else is rescaled from its minimum..maximum; NaN counts as
    0 and infinities as the extreme finite values.
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        return np.clip(values / 257.0, 0, 255).round().astype(np.uint8)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    values = np.nan_to_num(values, nan=0.0, posinf=high, neginf=low)
    if image.mode == "F" and low >= 0 and high <= 1.0:
        values = values * 255.0
    elif low >= 0 and high <= 255:
        pass
    elif image.mode != "F" and low >= 0 and high <= 65535:
        values = values / 257.0
    else:
        values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(values, 0, 255).round().astype(np.uint8)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL image to 8-bit RGB with its intended brightness.

    Transparent images (RGBA, RGBa, LA, La, PA, palette with transparency) are composited onto
    ``background``; 16/32-bit integer and float grayscale are scaled by their value range (see
    :func:`_gray_to_uint8`, never clipped to white); CMYK, YCbCr, LAB, HSV, 1-bit and palette images go
    through Pillow's own conversions.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        if mode == "La":
            image = image.convert("LA")  # premultiplied -> straight alpha (Pillow has no La -> RGBA)
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_gray_to_uint8(image)).convert("RGB")
    return image.convert("RGB")


def load_image(
    source: str | Path | bytes | BinaryIO,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Open and validate a user image -> PIL RGB image (EXIF orientation applied).

    ``source`` is a path, the file's bytes, or a binary file object. Raises :class:`ImageFormatError` when it
    is missing, not an image, truncated/corrupt, or larger than ``max_pixels`` (width * height) - checked
    from the header before anything is decoded, which defuses decompression bombs.
    """
    name = str(source) if isinstance(source, (str, Path)) else "<uploaded image>"
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ImageFormatError(f"Image file {name} does not exist; check the path.")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageFormatError(
                    f"{name} is {width}x{height} = {width * height} pixels, more than the limit of "
                    f"{max_pixels}; downscale it first (or raise max_pixels if you trust the file)."
                )
            image.load()
            return to_rgb(ImageOps.exif_transpose(image), background)
    except ImageFormatError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageFormatError(f"{name} is too large to decode safely ({exc}); downscale it first.") from exc
    except UnidentifiedImageError as exc:
        raise ImageFormatError(
            f"{name} is not an image that can be read (use PNG, JPEG, BMP, GIF, TIFF or WebP)."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageFormatError(
            f"{name} is truncated or corrupt ({exc}); re-export or replace the file."
        ) from exc
