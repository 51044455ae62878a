"""``vfpt``: VPT-deep where a ``fourier_fraction`` of each block's prompts goes through a 2D FFT (real part)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import PromptConfigError
from ..prompts import partial_fourier_transform
from .base import COMMON_FIELDS, TOKEN_FIELDS, register_method
from .vpt_deep import VPTDeep

if TYPE_CHECKING:
    from ..config import PromptConfig


@register_method
class VFPT(VPTDeep):
    """Visual Fourier prompt tuning: the first ``round(fourier_fraction * P)`` prompts of every block are
    replaced by the real part of their FFT over (sequence, hidden); blocks otherwise as VPT-deep."""

    name: ClassVar[str] = "vfpt"
    display_name: ClassVar[str] = "VFPT"
    config_fields: ClassVar[tuple[str, ...]] = (*TOKEN_FIELDS, "fourier_fraction", *COMMON_FIELDS)
    description: ClassVar[str] = "VPT-deep with a fourier_fraction of each block's prompts in Fourier space"

    def validate(self, config: PromptConfig) -> None:
        super().validate(config)
        if math.isnan(config.fourier_fraction) or not 0.0 <= config.fourier_fraction <= 1.0:
            raise PromptConfigError(f"fourier_fraction must be in [0, 1], got {config.fourier_fraction}.")

    def transform(self, config: PromptConfig, prompts: torch.Tensor) -> torch.Tensor:
        return partial_fourier_transform(prompts, config.fourier_fraction)
