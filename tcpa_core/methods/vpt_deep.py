"""``vpt-deep``: ``num_prompts`` fresh prompt tokens in every block; their outputs are discarded."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..errors import PromptConfigError
from ..prompts import PromptTokens
from .base import COMMON_FIELDS, TOKEN_FIELDS, PromptMethod, register_method

if TYPE_CHECKING:
    from ..config import PromptConfig
    from ..model import PromptedViT


@register_method
class VPTDeep(PromptMethod):
    """Each block runs timm's ``Block`` on ``[prefix | prompts_l | patches]`` (prompts are queries too) and keeps
    the prefix and patch rows. Subclasses change the block's prompts with :meth:`transform`."""

    name: ClassVar[str] = "vpt-deep"
    display_name: ClassVar[str] = "VPT-deep"
    config_fields: ClassVar[tuple[str, ...]] = (*TOKEN_FIELDS, *COMMON_FIELDS)
    description: ClassVar[str] = "num_prompts fresh prompt tokens per block, outputs discarded after each block"

    def validate(self, config: PromptConfig) -> None:
        if config.num_prompts < 1:
            raise PromptConfigError(f"method {self.name!r} needs num_prompts >= 1, got {config.num_prompts}.")

    def build_prompts(self, config: PromptConfig, depth: int, dim: int, patch_size: tuple[int, int]
                      ) -> nn.Module | None:
        return PromptTokens(depth, config.num_prompts, dim, patch_size)

    def key_columns(self, model: PromptedViT) -> tuple[int, int, int]:
        assert isinstance(model.prompts, PromptTokens)
        return 0, 0, int(model.prompts.prompts.shape[1])

    def hook_names(self) -> tuple[str, ...]:
        return (*super().hook_names(), "prompts")

    def transform(self, config: PromptConfig, prompts: torch.Tensor) -> torch.Tensor:
        """The block's prompts ``[B or 1, P, D]`` as they enter the sequence (identity for VPT-deep)."""
        return prompts

    def run_block(self, model: PromptedViT, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(model.prompts, PromptTokens)
        hooks, n, batch = model.hooks[layer], model.num_prefix, x.shape[0]
        x = hooks.resid_pre(x)
        prompts = model.prompt_batch(model.prompts.sequence(layer), batch)
        prompts = hooks.prompts(self.transform(model.config, prompts))
        num = prompts.shape[1]
        seq = torch.cat([x[:, :n], prompts.expand(batch, -1, -1), x[:, n:]], dim=1)
        out = self.sequence_block(model, layer, seq, num)
        return torch.cat([out[:, :n], out[:, n + num:]], dim=1), x.new_zeros(())
