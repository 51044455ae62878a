"""Hook points: identity modules where the model exposes intermediate values to forward hooks."""

from __future__ import annotations

from typing import Any

from torch import nn


class HookPoint(nn.Module):
    """Identity module; ``capture`` registers forward hooks on it to record what passes through."""

    def forward(self, value: Any) -> Any:
        return value

    @property
    def active(self) -> bool:
        """True while at least one forward hook is registered."""
        return bool(self._forward_hooks)


class BlockHooks(nn.Module):
    """Hook points of one block.

    attn:         [B, H, Q, K] attention after the TCPA mask
    attn_raw:     [B, H, Q, K] attention before the mask
    mask:         [B, Q, K] bool
    cls_assign:   [B, Kc] CLS-pool entries selected by the CLS token
    image_assign: [B, Np, Ki] image-pool entries selected by every patch token
    """

    NAMES = ("attn", "attn_raw", "mask", "cls_assign", "image_assign")
    attn: HookPoint
    attn_raw: HookPoint
    mask: HookPoint
    cls_assign: HookPoint
    image_assign: HookPoint

    def __init__(self) -> None:
        super().__init__()
        for name in self.NAMES:
            self.add_module(name, HookPoint())

    @property
    def wants_attention(self) -> bool:
        return self.attn.active or self.attn_raw.active or self.mask.active
