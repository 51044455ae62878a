"""Data: procedural pretraining images, the digits-on-clutter demo task, on-disk loaders, transforms."""

from .datasets import (
    DATASET_NAMES,
    SPLITS,
    LabeledDataset,
    build_dataset,
    dataset_size,
    limit_samples,
    open_split,
)
from .digits import DigitsOnClutter, digit_split_indices, render_digit
from .procedural import ProceduralGlyphs, glyph_templates, render_glyph_sample
from .transforms import (
    DEFAULT_MAX_PIXELS,
    build_transforms,
    data_config,
    load_image,
    to_normalized_tensor,
    to_rgb,
)

__all__ = [
    "DATASET_NAMES", "DEFAULT_MAX_PIXELS", "SPLITS", "DigitsOnClutter", "LabeledDataset", "ProceduralGlyphs",
    "build_dataset", "build_transforms", "data_config", "dataset_size", "limit_samples", "open_split",
    "digit_split_indices", "glyph_templates",
    "load_image", "render_digit", "render_glyph_sample", "to_normalized_tensor", "to_rgb",
]
