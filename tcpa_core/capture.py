"""``capture(model)``: record attention maps, masks, prompt assignments and features with forward hooks."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import CaptureError, UnsupportedModelError
from .hooks import BLOCK_HOOKS, MODEL_HOOKS, BlockHooks, HookPoint
from .layout import TokenLayout

#: Every per-block name ``capture`` can record (see :data:`tcpa_core.hooks.BLOCK_HOOKS` for shapes).
PER_LAYER: tuple[str, ...] = tuple(BLOCK_HOOKS)
#: Names recorded when ``names`` is not given (as before the residual stream and similarities were added;
#: ``resid_pre``, ``cls_sim``, ``sim``, ``prompt_columns`` and ``prompts`` are recorded when asked for).
DEFAULT_NAMES: tuple[str, ...] = ("attn", "attn_raw", "mask", "cls_assign", "image_assign", "features")
ALL_NAMES: tuple[str, ...] = (*PER_LAYER, *MODEL_HOOKS)


class ActivationCache:
    """What one forward pass recorded. Keys and shapes::

        cache["attn", l]           [B, H, Q, K]  attention after the TCPA mask (Q = prefix + patches,
                                                 K = prefix + prompts + patches, see ``cache.layout``)
        cache["attn_raw", l]       [B, H, Q, K]  attention before the mask
        cache["mask", l]           [B, Q, K]     bool
        cache["cls_assign", l]     [B, Kc]       selected CLS-pool entries (token matching only)
        cache["image_assign", l]   [B, Np, Ki]   selected image-pool entries per patch (token matching only)
        cache["features"]          [B, D]        pre-logits features
      recorded only when named in ``capture(names=...)``:
        cache["resid_pre", l]      [B, prefix+Np, D]  block input (VPT-shallow: [B, prefix+P+Np, D])
        cache["cls_sim", l]        [B, 1, Nc]    CLS token x CLS-pool keys cosine similarity
        cache["sim", l]            [B, Np, Ni]   patch tokens x image-pool keys cosine similarity
        cache["prompt_columns", l] [B or 1, Q, P] bool prompt key columns each query sees
        cache["prompts", l]        [B or 1, P, D] prompt sequence of the block

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
                f"{key!r} was not recorded; recorded names: {have}. Assignments and similarities exist only for "
                "methods with token matching; check the layers=/names= arguments of capture()."
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


def prompted_model(model: Any, caller: str) -> Any:
    """``model`` itself (or the module inside a DDP wrapper) when it is a ``PromptedViT``, else
    ``UnsupportedModelError`` naming ``caller``."""
    from .model import PromptedViT

    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(inner, PromptedViT):
        raise UnsupportedModelError(
            f"{caller} needs a PromptedViT (from tcpa_core.build_model or load_checkpoint), got "
            f"{type(model).__name__}; wrap a timm ViT with build_model(vit, PromptConfig(method='none')) first."
        )
    return inner


def check_layers(layers: Any, depth: int, what: str = "layers", error: type[Exception] = CaptureError
                 ) -> list[int]:
    """Block indices in ``[0, depth)`` from an int or an iterable of ints (negative count from the end)."""
    if isinstance(layers, str | bytes) or isinstance(layers, bool):
        raise error(f"{what} must be a block index or a list of them (e.g. [0, -1]), got {layers!r}.")
    items = [layers] if isinstance(layers, numbers.Integral) else None
    if items is None:
        if isinstance(layers, torch.Tensor):
            layers = layers.tolist()
        try:
            items = list(layers)
        except TypeError:
            raise error(
                f"{what} must be a block index or an iterable of them (e.g. [0, -1]), got {type(layers).__name__}."
            ) from None
    return sorted({check_layer(layer, depth, what, error) for layer in items})


def check_layer(layer: Any, depth: int, what: str = "layer", error: type[Exception] = CaptureError) -> int:
    """One block index in ``[0, depth)`` (negative counts from the end); ``error`` names what is wrong."""
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise error(f"{what} must hold integer block indices, got {type(layer).__name__} {layer!r}.")
    index = int(layer)
    if not -depth <= index < depth:
        raise error(f"{what}: block {index} is out of range for a model with {depth} blocks; use 0..{depth - 1} "
                    f"or -{depth}..-1.")
    return index % depth


def _check_names(names: Any) -> set[str]:
    if names is None:
        return set(DEFAULT_NAMES)
    items = [names] if isinstance(names, str) else None
    if items is None:
        try:
            items = list(names)
        except TypeError:
            raise CaptureError(
                f"names must be a name or an iterable of names such as ['attn', 'mask'], got {type(names).__name__}."
            ) from None
    bad = [n for n in items if not isinstance(n, str)]
    if bad:
        raise CaptureError(f"names must be strings, got {bad[:3]!r}; choose from {list(ALL_NAMES)}.")
    unknown = sorted(set(items) - set(ALL_NAMES))
    if unknown:
        raise CaptureError(f"unknown capture names {unknown}; choose from {list(ALL_NAMES)}.")
    return set(items)


def _check_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CaptureError(
            f"dtype is the storage dtype of recorded floating tensors and must be a floating torch dtype "
            f"(torch.float16, torch.bfloat16, torch.float32, torch.float64), got {dtype!r}."
        )
    return dtype


def _check_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    if not isinstance(device, str | torch.device):
        raise CaptureError(f"device must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}.")
    try:
        resolved = torch.device(device)
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError) as err:
        raise CaptureError(
            f"cannot store recorded tensors on device {str(device)!r} ({str(err).splitlines()[0]}); use 'cpu' "
            "or a device this machine has."
        ) from None
    return resolved


@contextmanager
def capture(
    model: torch.nn.Module,
    layers: Iterable[int] | int | None = None,
    names: Iterable[str] | str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> Iterator[ActivationCache]:
    """Record what a ``PromptedViT`` computes while the ``with`` block runs; hooks are removed on exit.

    Args:
        model: a ``PromptedViT`` (or a DDP wrapper of one).
        layers: a block index or an iterable of them (negative allowed, numpy ints too); default all.
            Fewer layers bound memory.
        names: a name or an iterable of names from ``ALL_NAMES``; default ``DEFAULT_NAMES`` (attention,
            attention before the mask, mask, assignments, features).
        dtype: storage dtype for floating tensors (a floating torch dtype; e.g. ``torch.float16`` halves the
            memory); integer and bool tensors keep theirs.
        device: where recorded tensors are stored (default: where they were computed).

    Raises:
        UnsupportedModelError: ``model`` is not a PromptedViT.
        CaptureError: bad layers, names, dtype or device (checked before anything is hooked).
    """
    inner = prompted_model(model, "capture")
    hooks: list[BlockHooks] = [inner.block_hooks(layer) for layer in range(inner.depth)]
    depth = len(hooks)
    wanted = _check_names(names)
    chosen = check_layers(layers, depth) if layers is not None else list(range(depth))
    dtype, device = _check_dtype(dtype), _check_device(device)
    cache = ActivationCache(depth)

    def store(key: str | tuple[str, int]) -> Callable[[HookPoint, Any, torch.Tensor], None]:
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

    handles = [inner.hook_layout.register_forward_hook(store_layout)]
    try:
        if "features" in wanted:
            handles.append(inner.hook_features.register_forward_hook(store("features")))
        for layer in chosen:
            for name in PER_LAYER:
                if name in wanted:
                    handles.append(hooks[layer].point(name).register_forward_hook(store((name, layer))))
        yield cache
    finally:
        for handle in handles:
            handle.remove()
