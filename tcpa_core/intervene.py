"""``intervene(model, ...)``: change what a ``PromptedViT`` computes while a ``with`` block runs.

``capture`` records; ``intervene`` edits (DESIGN.md section 7). It works on the fast path and on the capture
path alike, restores the model on exit (also when the block raises) and nests: an inner ``intervene`` adds
its masks/removals to the outer ones, its selection rule (when given) replaces the outer one, and its generic
hooks run after the outer ones (each sees the value the previous returned). Every argument is checked before
anything changes, so a bad call never leaves the model half edited and never runs a forward.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from .capture import check_layer, prompted_model
from .errors import PromptConfigError
from .hooks import BLOCK_HOOKS, MODEL_HOOKS, BlockEdit, HookPoint
from .methods import get_method, list_methods
from .prompts import PromptPools

#: Selection rules of ``intervene(selection=...)``.
SELECTION_RULES: tuple[str, ...] = ("topk", "random", "shared", "all")
POOL_NAMES: tuple[str, ...] = ("cls", "image")

HookFn = Callable[[Any, int | None], Any]
PromptEntries = Mapping[int, Mapping[str, Iterable[int] | int]]


def _pool_methods() -> str:
    return ", ".join(name for name in list_methods() if get_method(name).has_pools)


def _entries(spec: Any, pools: PromptPools, depth: int, what: str) -> dict[int, dict[str, frozenset[int]]]:
    """``{layer: {pool: entries}}`` checked against the model; layers normalised to ``0..depth-1``."""
    if not isinstance(spec, Mapping):
        raise PromptConfigError(
            f"{what} must map block -> {{pool: entries}}, e.g. {{5: {{'image': [3, 11]}}}}; got {type(spec).__name__}."
        )
    sizes = {"cls": pools.cls_pool_size, "image": pools.image_pool_size}
    out: dict[int, dict[str, frozenset[int]]] = {}
    for raw_layer, by_pool in spec.items():
        layer = check_layer(raw_layer, depth, what, PromptConfigError)
        if not isinstance(by_pool, Mapping):
            raise PromptConfigError(
                f"{what}[{raw_layer!r}] must map pool -> entries, e.g. {{'image': [3, 11]}}; got "
                f"{type(by_pool).__name__}."
            )
        for pool, entries in by_pool.items():
            if pool not in POOL_NAMES:
                raise PromptConfigError(
                    f"{what}[{raw_layer!r}]: unknown pool {pool!r}; the pools are 'cls' and 'image'."
                )
            items = [entries] if isinstance(entries, numbers.Integral) else entries
            if isinstance(items, str | bytes) or not isinstance(items, Iterable):
                raise PromptConfigError(
                    f"{what}[{raw_layer!r}][{pool!r}] must be an entry index or a list of them, got {entries!r}."
                )
            chosen = set()
            for entry in items:
                if isinstance(entry, bool) or not isinstance(entry, numbers.Integral):
                    raise PromptConfigError(
                        f"{what}[{raw_layer!r}][{pool!r}]: entries must be integers, got {type(entry).__name__} "
                        f"{entry!r}."
                    )
                index = int(entry)
                if not 0 <= index < sizes[pool]:
                    raise PromptConfigError(
                        f"{what}[{raw_layer!r}][{pool!r}]: entry {index} does not exist; the {pool} pool has "
                        f"entries 0..{sizes[pool] - 1}."
                    )
                chosen.add(index)
            merged = out.setdefault(layer, {})
            merged[pool] = merged.get(pool, frozenset()) | frozenset(chosen)
    return out


def _hooks(spec: Any, method: Any, depth: int) -> list[tuple[str, int | None, Callable[..., Any]]]:
    if not isinstance(spec, Mapping):
        raise PromptConfigError(
            f"hooks must map (name, block) -> fn, e.g. {{('image_assign', 5): fn}}; got {type(spec).__name__}."
        )
    out: list[tuple[str, int | None, Callable[..., Any]]] = []
    for key, fn in spec.items():
        name, layer = (key, None) if isinstance(key, str) else (key if isinstance(key, tuple) and len(key) == 2
                                                                 else (None, None))
        if not isinstance(name, str):
            raise PromptConfigError(f"hooks keys are (name, block) pairs or 'features', got {key!r}.")
        if not callable(fn):
            raise PromptConfigError(f"hooks[{key!r}] must be a function fn(value, layer), got {type(fn).__name__}.")
        if name in MODEL_HOOKS:
            if layer is not None:
                raise PromptConfigError(f"hook point {name!r} belongs to the whole model; use the key {name!r}.")
            out.append((name, None, fn))
            continue
        if name not in BLOCK_HOOKS:
            raise PromptConfigError(
                f"unknown hook point {name!r}; choose from {[*BLOCK_HOOKS, *MODEL_HOOKS]}."
            )
        if layer is None:
            raise PromptConfigError(f"hook point {name!r} is per block; use the key ({name!r}, block).")
        resolved = check_layer(layer, depth, f"hooks[{key!r}]", PromptConfigError)
        fires = method.hook_layers(name, depth)
        if resolved not in fires:
            where = f"only in blocks {list(fires)}" if fires else "in no block"
            raise PromptConfigError(
                f"method {method.name!r} computes {name!r} {where}, so hooks[{key!r}] would never run; its hook "
                f"points are {list(method.hook_names())}."
            )
        out.append((name, resolved, fn))
    return out


@contextmanager
def intervene(
    model: torch.nn.Module,
    mask_prompts: PromptEntries | None = None,
    remove_prompts: PromptEntries | None = None,
    selection: str | None = None,
    hooks: Mapping[Any, HookFn] | None = None,
    seed: int = 0,
) -> Iterator[torch.nn.Module]:
    """Edit the model while the ``with`` block runs (DESIGN.md section 7); yields the ``PromptedViT``.

    Args:
        model: a ``PromptedViT`` (or a DDP wrapper of one).
        mask_prompts: ``{block: {"cls" | "image": entries}}``: the prompt key columns of those entries are 0 in
            the mask for every query of that block; the softmax is still over all keys (no renormalisation).
        remove_prompts: same form: the entries leave the pool: not selectable (tokens re-select their top-k
            among the rest, ``k`` capped at what is left) and their keys are not in the softmax at all.
            The captured layout keeps their columns (attention 0 there).
        selection: the matching rule of every block: ``"topk"`` (the model's rule, also during the training
            warm-up), ``"random"`` (uniformly random distinct entries per token, seeded by ``seed``: the picks
            depend only on seed, block and pool), ``"shared"`` (every patch token uses the top-k of the mean
            patch token; the CLS token keeps its own top-k) or ``"all"`` (every entry of its pool, as R-TCPA).
            None keeps the enclosing rule.
        hooks: generic edits ``{(name, block): fn}`` (``"features"`` for the pre-logits features) with
            ``fn(value, layer) -> replacement or None``; names and shapes in :data:`tcpa_core.hooks.BLOCK_HOOKS`.
            A hook on ``attn_raw``/``mask``/``attn`` makes its block take the explicit attention path, and the
            tensor the hook returns is the one used downstream (gradients flow through it).
        seed: seed of the ``"random"`` rule.

    Raises:
        UnsupportedModelError: ``model`` is not a PromptedViT.
        PromptConfigError: unknown blocks, pools, entries, hook points or rules, prompt edits on a method
            without prompt pools, ``"random"``/``"shared"`` on a method without token matching.
    """
    inner = prompted_model(model, "intervene")
    method, depth = inner.spec, inner.depth
    wants_pools = mask_prompts is not None or remove_prompts is not None or selection is not None
    if wants_pools and not isinstance(inner.prompts, PromptPools):
        raise PromptConfigError(
            f"method {method.name!r} has no prompt pools, so mask_prompts/remove_prompts/selection cannot apply; "
            f"they need one of {_pool_methods()} (generic hooks=, e.g. on 'attn', work for every method)."
        )
    if selection is not None:
        if selection not in SELECTION_RULES:
            raise PromptConfigError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTION_RULES)}.")
        if selection in ("random", "shared") and not method.token_matching:
            raise PromptConfigError(
                f"selection={selection!r} changes token matching, which method {method.name!r} does not do "
                "(its tokens see every prompt of their pool); use 'all' or a method with token matching."
            )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise PromptConfigError(f"seed must be an integer, got {type(seed).__name__} {seed!r}.")
    masked = _entries(mask_prompts, inner.prompts, depth, "mask_prompts") if mask_prompts is not None else {}
    removed = _entries(remove_prompts, inner.prompts, depth, "remove_prompts") if remove_prompts is not None else {}
    generic = _hooks(hooks, method, depth) if hooks is not None else []

    edits: dict[int, BlockEdit] = {}
    if wants_pools:
        for layer in range(depth):
            if layer in masked or layer in removed or selection is not None:
                edits[layer] = BlockEdit(masked=masked.get(layer, {}), removed=removed.get(layer, {}),
                                         selection=selection, seed=int(seed))
    previous = inner._block_edits
    removers: list[Callable[[], None]] = []
    try:
        if edits:
            combined = dict(previous or {})
            for layer, edit in edits.items():
                combined[layer] = combined[layer].merged(edit) if layer in combined else edit
            inner._block_edits = combined
        for name, layer, fn in generic:
            point: HookPoint = inner.hook_features if layer is None else inner.block_hooks(layer).point(name)
            removers.append(point.add_edit(_bind(fn, layer)))
        yield inner
    finally:
        for remove in reversed(removers):
            remove()
        inner._block_edits = previous


def _bind(fn: HookFn, layer: int | None) -> Callable[[Any], Any]:
    def edit(value: Any) -> Any:
        return fn(value, layer)

    return edit


__all__ = ["POOL_NAMES", "SELECTION_RULES", "intervene"]
