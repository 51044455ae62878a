"""tcpa_core: Token Coordinated Prompt Attention (and VPT-style baselines) for timm VisionTransformers."""

from . import backbone as _backbone  # noqa: F401  (registers tcpa_demo_vit with timm)
from .capture import ActivationCache, capture
from .checkpoint import load_checkpoint, save_checkpoint
from .config import METHODS, PromptConfig
from .errors import (
    BackboneArgumentError,
    BackboneMismatchError,
    CaptureError,
    CheckpointError,
    DatasetError,
    DeviceError,
    EmptyDatasetError,
    ImageFormatError,
    InputShapeError,
    OutputPathError,
    PromptConfigError,
    RunExistsError,
    RunLockedError,
    TCPAError,
    TrainConfigError,
    TrainingError,
    UnsupportedModelError,
)
from .intervene import intervene
from .layout import TokenLayout
from .methods import PromptMethod, get_method, list_methods, register_method
from .model import PromptedViT, build_model
from .run_lock import RunLock
from .train import EvalResult, TrainConfig, evaluate, extract_features

__all__ = [
    "METHODS", "PromptConfig", "PromptMethod", "get_method", "list_methods", "register_method", "PromptedViT",
    "build_model", "capture", "intervene", "ActivationCache", "TokenLayout",
    "BackboneArgumentError", "BackboneMismatchError", "CaptureError", "CheckpointError", "DatasetError",
    "EmptyDatasetError", "ImageFormatError", "InputShapeError", "PromptConfigError", "TCPAError", "TrainConfigError",
    "TrainingError", "UnsupportedModelError",
    "load_checkpoint", "save_checkpoint", "EvalResult", "TrainConfig", "evaluate", "extract_features",
    "DeviceError", "OutputPathError", "RunExistsError", "RunLockedError", "RunLock",
]
