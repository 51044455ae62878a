"""``tcpa``: Token Coordinated Prompt Attention (per-block CLS and image prompt pools, per-token selection).

A block (DESIGN.md section 1): the CLS token selects its top-``cls_topk`` CLS-pool entries, every patch token
its top-``image_topk`` image-pool entries (largest cosine similarity of the block input to the entries'
keys); the prompt sequence ``[all CLS prompts | all image prompts]`` joins the keys only, and each query
sees just the prompt columns of the entries it selected, with the softmax over all keys and no
renormalisation. Fast path: ``block_fused`` (fused attention, exact); capture path: ``block_explicit``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..attention import block_explicit, block_fused
from ..errors import PromptConfigError
from ..hooks import BlockEdit, HookPoint
from ..matching import match, pool_similarities
from ..prompts import PromptPools, fourier_transform
from .base import COMMON_FIELDS, POOL_FIELDS, PromptMethod, Role, get_method, register_method

if TYPE_CHECKING:
    from ..config import PromptConfig
    from ..model import PromptedViT

POOLS: tuple[str, ...] = ("cls", "image")


def pools_of(model: PromptedViT) -> PromptPools:
    assert isinstance(model.prompts, PromptPools)
    return model.prompts


@register_method
class TCPA(PromptMethod):
    """TCPA with token matching. Subclasses change :meth:`columns` (R-TCPA) or the config (VFPT+TCPA, VP+TCPA)."""

    name: ClassVar[str] = "tcpa"
    display_name: ClassVar[str] = "TCPA"
    role: ClassVar[Role] = "tcpa"
    has_pools: ClassVar[bool] = True
    token_matching: ClassVar[bool] = True
    config_fields: ClassVar[tuple[str, ...]] = (
        *POOL_FIELDS[:2], "cls_topk", "image_topk", *POOL_FIELDS[2:], "fourier", *COMMON_FIELDS)
    description: ClassVar[str] = ("per-block CLS and image prompt pools; every token attends only to the "
                                  "prompts it selects (top-k cosine similarity to the keys)")

    def validate(self, config: PromptConfig) -> None:
        for name in ("cls_pool_size", "image_pool_size"):
            if getattr(config, name) < 1:
                raise PromptConfigError(
                    f"{name} must be >= 1 for method {config.method!r}, got {getattr(config, name)}; "
                    "use method 'none' or 'vpt-deep' for a model without prompt pools."
                )
        if not self.token_matching:
            return
        for topk, pool in (("cls_topk", "cls_pool_size"), ("image_topk", "image_pool_size")):
            k, n = getattr(config, topk), getattr(config, pool)
            if not 1 <= k <= n:
                raise PromptConfigError(
                    f"{topk}={k} must be between 1 and {pool}={n}: a token cannot select more "
                    f"prompts than the pool holds. Lower {topk} or enlarge {pool}."
                )

    def resolve(self, config: PromptConfig) -> PromptMethod:
        if type(self) is not TCPA:
            return self
        if config.fourier:
            return get_method("vfpt+tcpa")
        if config.input_prompt is not None:
            return get_method("vp+tcpa")
        return self

    def build_prompts(self, config: PromptConfig, depth: int, dim: int, patch_size: tuple[int, int]
                      ) -> nn.Module | None:
        return PromptPools(depth, dim, config.cls_pool_size, config.image_pool_size, config.prompt_length,
                           with_keys=self.token_matching)

    def key_columns(self, model: PromptedViT) -> tuple[int, int, int]:
        pools = pools_of(model)
        return pools.num_cls_columns, pools.num_image_columns, 0

    def hook_names(self) -> tuple[str, ...]:
        matching = ("cls_sim", "sim", "cls_assign", "image_assign") if self.token_matching else ()
        return ("resid_pre", *matching, "prompt_columns", "prompts", "attn_raw", "mask", "attn")

    def columns(self, model: PromptedViT, layer: int, x: torch.Tensor, edit: BlockEdit | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt-column selection ``[B or 1, Q, P]`` bool of block ``layer`` and its pool-loss term."""
        pools, cfg, n, hooks = pools_of(model), model.config, model.num_prefix, model.block_hooks(layer)
        assert pools.image_keys is not None and pools.cls_keys is not None
        warm_up = model.random_selection and model.training
        cls_keys, image_keys = pools.cls_keys[layer], pools.image_keys[layer]
        cls_sim, image_sim = pool_similarities(x, n, cls_keys, image_keys)
        image, loss = match(x[:, n:], image_keys, cfg.image_topk, similarity=image_sim, layer=layer,
                            pool="image", sim_hook=hooks.sim, assign_hook=hooks.image_assign, edit=edit,
                            warm_up=warm_up)
        nc = pools.cls_pool_size
        chosen = torch.zeros(*x.shape[:2], nc + pools.image_pool_size, dtype=torch.bool, device=x.device)
        chosen[:, n:].scatter_(-1, image + nc, True)
        if n:
            cls, cls_loss = match(x[:, :1], cls_keys, cfg.cls_topk, similarity=cls_sim, layer=layer, pool="cls",
                                  sim_hook=hooks.cls_sim, assign_hook=_RowHook(hooks.cls_assign), edit=edit,
                                  warm_up=warm_up)
            chosen[:, :n].scatter_(-1, cls.expand(-1, n, -1), True)
            loss = loss + cls_loss
        return chosen.repeat_interleave(cfg.prompt_length, dim=-1) if cfg.prompt_length > 1 else chosen, loss

    def run_block(self, model: PromptedViT, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._block(model, layer, x, None)

    def head_rows(self, model: PromptedViT, layer: int, x: torch.Tensor, rows: int) -> torch.Tensor:
        return self._block(model, layer, x, rows)[0]

    def _block(self, model: PromptedViT, layer: int, x: torch.Tensor, rows: int | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``layer``: output ``[B, N, D]`` (or its first ``rows`` rows, computed alone on the fast path)
        and the pool-loss term."""
        pools, hooks = pools_of(model), model.block_hooks(layer)
        edit = model.block_edit(layer)
        x = hooks.resid_pre(x)
        allowed, loss = self.columns(model, layer, x, edit)
        present = None
        if edit is not None:
            sizes, lp = (pools.cls_pool_size, pools.image_pool_size), pools.prompt_length
            masked = edit.column_flags("masked", sizes, lp, x.device)
            removed = edit.column_flags("removed", sizes, lp, x.device)
            hidden = masked if removed is None else removed if masked is None else masked | removed
            if hidden is not None:
                allowed = allowed & ~hidden
            present = None if removed is None else ~removed
        allowed = hooks.prompt_columns(allowed)
        prompts = model.prompt_batch(pools.sequence(layer), x.shape[0])
        if model.config.fourier:
            prompts = fourier_transform(prompts)
        prompts = hooks.prompts(prompts)
        block = model.block(layer)
        if hooks.wants_attention:
            x = block_explicit(block, x, model.num_prefix, prompts, allowed, hooks, present)[0][:, :rows]
        else:
            x = block_fused(block, x, prompts, allowed, present, rows)
        return x, loss


class _RowHook:
    """Presents the CLS selection ``[B, 1, k]`` to the ``cls_assign`` hook point as ``[B, k]``."""

    def __init__(self, point: HookPoint) -> None:
        self.point = point

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.point(indices[:, 0])
        return out.unsqueeze(1)
