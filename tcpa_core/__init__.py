"""tcpa_core: Token Coordinated Prompt Attention (and VPT-style baselines) for timm VisionTransformers."""

from . import backbone as _backbone  # noqa: F401  (registers tcpa_demo_vit with timm)
from .capture import ActivationCache, capture
from .config import METHODS, PromptConfig
from .errors import (
    BackboneMismatchError,
    CheckpointError,
    DatasetError,
    EmptyDatasetError,
    ImageFormatError,
    InputShapeError,
    PromptConfigError,
    TCPAError,
    UnsupportedModelError,
)
from .layout import TokenLayout
from .model import PromptedViT, build_model

__all__ = [
    "METHODS", "PromptConfig", "PromptedViT", "build_model", "capture", "ActivationCache", "TokenLayout",
    "BackboneMismatchError", "CheckpointError", "DatasetError", "EmptyDatasetError", "ImageFormatError",
    "InputShapeError", "PromptConfigError", "TCPAError", "UnsupportedModelError",
]
