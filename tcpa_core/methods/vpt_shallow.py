"""``vpt-shallow``: ``num_prompts`` prompt tokens inserted after the embedding and carried through every block."""

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


def _tokens(model: PromptedViT) -> PromptTokens:
    assert isinstance(model.prompts, PromptTokens)
    return model.prompts


@register_method
class VPTShallow(PromptMethod):
    """Prompts are part of the residual stream ``[prefix | prompts | patches]`` (queries too) in every block;
    ``resid_pre`` is therefore ``[B, prefix+P+Np, D]`` and the ``prompts`` hook fires once, in block 0."""

    name: ClassVar[str] = "vpt-shallow"
    display_name: ClassVar[str] = "VPT-shallow"
    config_fields: ClassVar[tuple[str, ...]] = (*TOKEN_FIELDS, *COMMON_FIELDS)
    description: ClassVar[str] = "num_prompts prompt tokens after the embedding, carried through all blocks"

    def validate(self, config: PromptConfig) -> None:
        if config.num_prompts < 1:
            raise PromptConfigError(f"method {self.name!r} needs num_prompts >= 1, got {config.num_prompts}.")

    def build_prompts(self, config: PromptConfig, depth: int, dim: int, patch_size: tuple[int, int]
                      ) -> nn.Module | None:
        return PromptTokens(1, config.num_prompts, dim, patch_size)

    def key_columns(self, model: PromptedViT) -> tuple[int, int, int]:
        return 0, 0, int(_tokens(model).prompts.shape[1])

    def hook_names(self) -> tuple[str, ...]:
        return (*super().hook_names(), "prompts")

    def hook_layers(self, name: str, depth: int) -> tuple[int, ...]:
        return (0,) if name == "prompts" else super().hook_layers(name, depth)

    def enter_stream(self, model: PromptedViT, x: torch.Tensor) -> torch.Tensor:
        n, batch = model.num_prefix, x.shape[0]
        prompts = model.hooks[0].prompts(model.prompt_batch(_tokens(model).sequence(0), batch))
        return torch.cat([x[:, :n], prompts.expand(batch, -1, -1), x[:, n:]], dim=1)

    def leave_stream(self, model: PromptedViT, x: torch.Tensor) -> torch.Tensor:
        n = model.num_prefix
        return torch.cat([x[:, :n], x[:, n + self.key_columns(model)[2]:]], dim=1)

    def run_block(self, model: PromptedViT, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = model.hooks[layer].resid_pre(x)
        return self.sequence_block(model, layer, x, self.key_columns(model)[2]), x.new_zeros(())
