"""Learnable prompt parameters: TCPA prompt pools and VPT-style prompt tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PromptConfigError


class PromptPools(nn.Module):
    """Per-block CLS and image prompt pools of TCPA.

    Attributes (``L`` blocks, ``Nc``/``Ni`` pool entries, ``Lp`` prompt length, ``D`` width):
        cls_keys:      [L, Nc, D]      matched against the CLS token (None for R-TCPA)
        cls_prompts:   [L, Nc, Lp, D]
        image_keys:    [L, Ni, D]      matched against every patch token (None for R-TCPA)
        image_prompts: [L, Ni, Lp, D]
    All initialised uniform(-1, 1), as in the authors' code.
    """

    def __init__(
        self, depth: int, dim: int, cls_pool_size: int, image_pool_size: int, prompt_length: int,
        with_keys: bool = True,
    ) -> None:
        super().__init__()
        self.depth, self.dim, self.prompt_length = depth, dim, prompt_length
        self.cls_pool_size, self.image_pool_size = cls_pool_size, image_pool_size
        self.cls_prompts = nn.Parameter(torch.empty(depth, cls_pool_size, prompt_length, dim).uniform_(-1, 1))
        self.image_prompts = nn.Parameter(
            torch.empty(depth, image_pool_size, prompt_length, dim).uniform_(-1, 1)
        )
        self.cls_keys: nn.Parameter | None = None
        self.image_keys: nn.Parameter | None = None
        if with_keys:
            self.cls_keys = nn.Parameter(torch.empty(depth, cls_pool_size, dim).uniform_(-1, 1))
            self.image_keys = nn.Parameter(torch.empty(depth, image_pool_size, dim).uniform_(-1, 1))

    @property
    def num_cls_columns(self) -> int:
        return self.cls_pool_size * self.prompt_length

    @property
    def num_image_columns(self) -> int:
        return self.image_pool_size * self.prompt_length

    def sequence(self, layer: int) -> torch.Tensor:
        """Prompt sequence of a block: all CLS prompts then all image prompts, ``[(Nc+Ni)*Lp, D]``."""
        return torch.cat(
            [self.cls_prompts[layer].reshape(-1, self.dim), self.image_prompts[layer].reshape(-1, self.dim)]
        )


class PromptTokens(nn.Module):
    """VPT prompt tokens: ``prompts`` is ``[L, P, D]`` (deep: one set per block) or ``[1, P, D]`` (shallow).

    Initialised uniform(-v, v) with ``v = sqrt(6 / (3 * patch_h * patch_w + D))`` as in VPT.
    """

    def __init__(self, num_sets: int, num_prompts: int, dim: int, patch_size: tuple[int, int]) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch_size[0] * patch_size[1] + dim))
        self.prompts = nn.Parameter(torch.empty(num_sets, num_prompts, dim).uniform_(-bound, bound))

    def sequence(self, layer: int) -> torch.Tensor:
        """Prompt tokens of a block, ``[P, D]``."""
        return self.prompts[layer]


def fourier_transform(prompts: torch.Tensor) -> torch.Tensor:
    """VFPT's transform: real part of the 2D FFT over (sequence, hidden) of ``[..., S, D]``."""
    return torch.fft.fft(torch.fft.fft(prompts.float(), dim=-1), dim=-2).real.to(prompts.dtype)


def partial_fourier_transform(prompts: torch.Tensor, fraction: float) -> torch.Tensor:
    """VFPT baseline: the first ``round(fraction * S)`` prompts of ``[..., S, D]`` go through
    :func:`fourier_transform` (as one sequence); the rest stay as they are."""
    num_fourier = round(fraction * prompts.shape[-2])
    if num_fourier == 0:
        return prompts
    transformed = fourier_transform(prompts[..., :num_fourier, :])
    return torch.cat([transformed, prompts[..., num_fourier:, :]], dim=-2)


class PadPrompt(nn.Module):
    """VP padding prompt: a learnable frame of width ``pad`` added to the (normalised) input image.

    Input/output ``[B, C, H, W]``. Initialised to zero, so training starts from the plain backbone.
    """

    def __init__(self, image_size: tuple[int, int], pad: int, channels: int = 3) -> None:
        super().__init__()
        h, w = image_size
        if not 0 < 2 * pad < min(h, w):
            raise PromptConfigError(
                f"pad_size {pad} does not fit an image of {h}x{w}: the frame needs 0 < 2 * pad_size < {min(h, w)}; "
                "lower pad_size (or leave it None for the automatic size)."
            )
        self.image_size, self.pad = (h, w), pad
        self.top = nn.Parameter(torch.zeros(1, channels, pad, w))
        self.bottom = nn.Parameter(torch.zeros(1, channels, pad, w))
        self.left = nn.Parameter(torch.zeros(1, channels, h - 2 * pad, pad))
        self.right = nn.Parameter(torch.zeros(1, channels, h - 2 * pad, pad))

    def frame(self) -> torch.Tensor:
        """The additive prompt image ``[1, C, H, W]`` (zero inside the frame)."""
        h, w = self.image_size
        inner = torch.zeros(1, self.top.shape[1], h - 2 * self.pad, w - 2 * self.pad, device=self.top.device,
                            dtype=self.top.dtype)
        middle = torch.cat([self.left, inner, self.right], dim=3)
        return torch.cat([self.top, middle, self.bottom], dim=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + self.frame()


class ConvPrompt(nn.Module):
    """Input prompt as a learnable residual 3x3 convolution on the image (zero-initialised)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + self.conv(images)


def prompt_dropout(prompts: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout on prompt embeddings (``[B, P, D]``), active only while training."""
    return F.dropout(prompts, p=p, training=training) if p > 0 else prompts
