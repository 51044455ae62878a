"""``capture(model)``: record attention maps, masks, prompt assignments and features with forward hooks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .hooks import BlockHooks, HookPoint
from .layout import TokenLayout

if TYPE_CHECKING:
    from .model import PromptedViT

PER_LAYER = BlockHooks.NAMES


class ActivationCache:
    """What one forward pass recorded. Keys and shapes::

        cache["attn", l]          [B, H, Q, K]  attention after the TCPA mask (Q = prefix + patches,
                                                K = prefix + prompts + patches, see ``cache.layout``)
        cache["attn_raw", l]      [B, H, Q, K]  attention before the mask
        cache["mask", l]          [B, Q, K]     bool
        cache["cls_assign", l]    [B, Kc]       selected CLS-pool entries (TCPA only)
        cache["image_assign", l]  [B, Np, Ki]   selected image-pool entries per patch (TCPA only)
        cache["features"]         [B, D]        pre-logits features

    ``l`` may be negative (``-1`` = last block). A later forward inside the same ``capture`` overwrites.
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.layout: TokenLayout | None = None
        self._store: dict[Any, torch.Tensor] = {}

    def _key(self, key: str | tuple[str, int]) -> str | tuple[str, int]:
        if isinstance(key, tuple):
            name, layer = key
            if not -self.depth <= layer < self.depth:
                raise KeyError(f"layer {layer} is out of range for a model with {self.depth} blocks")
            return name, layer % self.depth
        return key

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:
        resolved = self._key(key)
        if resolved not in self._store:
            have = sorted({k[0] if isinstance(k, tuple) else k for k in self._store})
            raise KeyError(
                f"{key!r} was not recorded; recorded names: {have}. Assignments exist only for method 'tcpa'; "
                "check the layers=/names= arguments of capture()."
            )
        return self._store[resolved]

    def __contains__(self, key: object) -> bool:
        try:
            return self._key(key) in self._store  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            return False

    def __len__(self) -> int:
        return len(self._store)

    def keys(self) -> list[str | tuple[str, int]]:
        return list(self._store)

    def layers(self, name: str = "attn") -> list[int]:
        """Block indices for which ``name`` was recorded."""
        return sorted(k[1] for k in self._store if isinstance(k, tuple) and k[0] == name)

    def stack(self, name: str) -> torch.Tensor:
        """All recorded layers of ``name`` stacked on a new first dimension: ``[L, ...]``."""
        return torch.stack([self._store[(name, layer)] for layer in self.layers(name)])

    def clear(self) -> None:
        self._store.clear()
        self.layout = None


@contextmanager
def capture(
    model: PromptedViT,
    layers: Iterable[int] | None = None,
    names: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> Iterator[ActivationCache]:
    """Record what a ``PromptedViT`` computes while the ``with`` block runs; hooks are removed on exit.

    Args:
        model: a ``PromptedViT``.
        layers: block indices to record (negative allowed); default all. Fewer layers bound memory.
        names: subset of ``attn``, ``attn_raw``, ``mask``, ``cls_assign``, ``image_assign``, ``features``.
        dtype: storage dtype for floating tensors (e.g. ``torch.float16`` halves the memory).
        device: where recorded tensors are stored (default: where they were computed).
    """
    hooks: list[BlockHooks] = [model.block_hooks(layer) for layer in range(model.depth)]
    depth = len(hooks)
    wanted = set(names) if names is not None else {*PER_LAYER, "features"}
    unknown = wanted - {*PER_LAYER, "features"}
    if unknown:
        raise ValueError(f"unknown capture names {sorted(unknown)}; choose from {[*PER_LAYER, 'features']}")
    chosen = sorted({layer % depth for layer in layers}) if layers is not None else list(range(depth))
    for layer in layers or ():
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} is out of range for a model with {depth} blocks")
    cache = ActivationCache(depth)

    def store(key: str | tuple[str, int]):
        def hook(_module: HookPoint, _args: Any, output: torch.Tensor) -> None:
            value = output.detach()
            if device is not None:
                value = value.to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            cache._store[key] = value
        return hook

    def store_layout(_module: HookPoint, _args: Any, output: TokenLayout) -> None:
        cache.layout = output

    handles = [model.hook_layout.register_forward_hook(store_layout)]
    try:
        if "features" in wanted:
            handles.append(model.hook_features.register_forward_hook(store("features")))
        for layer in chosen:
            for name in PER_LAYER:
                if name in wanted:
                    handles.append(getattr(hooks[layer], name).register_forward_hook(store((name, layer))))
        yield cache
    finally:
        for handle in handles:
            handle.remove()
