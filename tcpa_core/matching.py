"""Token-prompt matching: every token selects the pool entries whose keys are most similar to it."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .hooks import BlockEdit

POOLS: tuple[str, ...] = ("cls", "image")


def cosine_similarity(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``normalize(queries) @ normalize(keys).T``: [B, T, D] x [N, D] -> [B, T, N]."""
    return F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).transpose(0, 1)


def pool_similarities(
    x: torch.Tensor, num_prefix: int, cls_keys: torch.Tensor, image_keys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities of the CLS token to the CLS-pool keys and of the patch tokens to the image-pool
    keys, from one normalisation of ``x`` and one product with both pools' keys.

    Args:
        x: [B, prefix+Np, D] block input; cls_keys: [Nc, D]; image_keys: [Ni, D].
    Returns:
        ``[B, 1, Nc]`` (empty rows when ``num_prefix`` is 0) and ``[B, Np, Ni]``.
    """
    nc = cls_keys.shape[0]
    both = cosine_similarity(x, torch.cat([cls_keys, image_keys]))
    return both[:, :min(num_prefix, 1), :nc], both[:, num_prefix:, nc:]


def _random_scores(shape: torch.Size, device: torch.device, seed: int, layer: int, pool: int) -> torch.Tensor:
    """Uniform scores for the seeded ``"random"`` rule; they depend only on (seed, layer, pool, shape)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + 2 * layer + pool)
    return torch.rand(shape, generator=generator, device=device)


def match(
    queries: torch.Tensor, keys: torch.Tensor, k: int, *, similarity: torch.Tensor | None = None,
    layer: int, pool: str,
    sim_hook: Callable[[torch.Tensor], torch.Tensor], assign_hook: Callable[[torch.Tensor], torch.Tensor],
    edit: BlockEdit | None, warm_up: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries selected by every query token and their pool-loss term.

    Args:
        queries: [B, T, D] block input of the matching tokens (not detached).
        keys: [N, D] pool keys.
        similarity: ``cosine_similarity(queries, keys)`` [B, T, N] when already computed, or None.
        k: entries per token (capped at the entries left when some are removed).
        sim_hook, assign_hook: hook points of the similarity [B, T, N] and of the selection [B, T, k].
        edit: the active intervention of this block (removed entries, selection rule) or None.
        warm_up: random selection of the training warm-up (``model.random_selection`` in train mode).
    Returns:
        indices [B, T, k] and the loss ``mean(1 - sim)`` over the selected entries (0 when none is selected).
    """
    sim = sim_hook(cosine_similarity(queries, keys) if similarity is None else similarity)
    rule = edit.selection if edit is not None and edit.selection is not None else None
    removed = edit.removed_entries(pool, keys.shape[0], keys.device) if edit is not None else None
    left = keys.shape[0] - (int(removed.sum()) if removed is not None else 0)
    k = min(k, left)
    if rule == "all":
        entries = torch.arange(keys.shape[0], device=keys.device)
        if removed is not None:
            entries = entries[~removed]
        indices = entries.expand(*sim.shape[:-1], -1)
    else:
        if rule == "random" or (rule is None and warm_up):
            scores = (_random_scores(sim.shape, sim.device, edit.seed, layer, POOLS.index(pool))
                      if rule == "random" and edit is not None else torch.rand(sim.shape, device=sim.device))
        elif rule == "shared" and pool == "image":
            scores = cosine_similarity(queries.mean(dim=1, keepdim=True), keys).expand_as(sim)
        else:
            scores = sim
        if removed is not None:
            scores = scores.masked_fill(removed, float("-inf"))
        indices = scores.topk(k, dim=-1).indices
    indices = assign_hook(indices)
    similarity = sim.gather(-1, indices)
    loss = (1.0 - similarity).mean() if similarity.numel() else sim.new_zeros(())
    return indices, loss

