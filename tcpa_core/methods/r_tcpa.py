"""``r-tcpa``: TCPA without token matching: the prefix sees every CLS-pool prompt, patches every image-pool one."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from ..hooks import BlockEdit
from .base import COMMON_FIELDS, POOL_FIELDS, register_method
from .tcpa import TCPA, pools_of

if TYPE_CHECKING:
    from ..model import PromptedViT


@register_method
class RTCPA(TCPA):
    """Pools without keys; the prompt columns are fixed by role (no ``cls_assign``/``image_assign``, no pool loss)."""

    name: ClassVar[str] = "r-tcpa"
    display_name: ClassVar[str] = "R-TCPA"
    token_matching: ClassVar[bool] = False
    config_fields: ClassVar[tuple[str, ...]] = (*POOL_FIELDS, "fourier", *COMMON_FIELDS)
    description: ClassVar[str] = "TCPA without token matching: CLS sees all CLS prompts, patches all image prompts"

    def columns(self, model: PromptedViT, layer: int, x: torch.Tensor, edit: BlockEdit | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        pools, n = pools_of(model), model.num_prefix
        num_patches = x.shape[1] - n
        cls_rows = torch.cat([x.new_ones(n, pools.num_cls_columns), x.new_zeros(n, pools.num_image_columns)], 1)
        patch_rows = torch.cat([x.new_zeros(num_patches, pools.num_cls_columns),
                                x.new_ones(num_patches, pools.num_image_columns)], 1)
        return torch.cat([cls_rows, patch_rows]).bool().unsqueeze(0), x.new_zeros(())
