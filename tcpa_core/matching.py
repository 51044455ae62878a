"""Token-prompt matching: every token selects the pool entries whose keys are most similar to it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Selection:
    """Result of matching ``T`` query tokens per sample against a pool of ``N`` keys.

    indices:    [B, T, k] selected pool entries (largest cosine similarity first; random order in warm-up)
    similarity: [B, T, k] cosine similarity of each selected entry (differentiable w.r.t. queries and keys)
    """

    indices: torch.Tensor
    similarity: torch.Tensor

    def distance(self) -> torch.Tensor:
        """Pool loss term ``mean(1 - sim)`` over the selected entries (scalar)."""
        return (1.0 - self.similarity).mean()


def cosine_similarity(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``normalize(queries) @ normalize(keys).T``: [B, T, D] x [N, D] -> [B, T, N]."""
    return F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).transpose(0, 1)


def select_prompts(queries: torch.Tensor, keys: torch.Tensor, k: int, random: bool = False) -> Selection:
    """Select ``k`` pool entries per token.

    Args:
        queries: [B, T, D] token states (block input, before norm1; not detached).
        keys: [N, D] pool keys.
        k: entries per token (1 <= k <= N).
        random: warm-up mode: a uniformly random set of ``k`` entries per token instead of the top-k.
    """
    sim = cosine_similarity(queries, keys)
    if random:
        indices = torch.rand(sim.shape, device=sim.device).topk(k, dim=-1).indices
    else:
        indices = sim.topk(k, dim=-1).indices
    return Selection(indices=indices, similarity=sim.gather(-1, indices))


def selection_to_columns(indices: torch.Tensor, pool_size: int, prompt_length: int) -> torch.Tensor:
    """Boolean column selection of a pool's prompt sequence.

    Args:
        indices: [B, T, k] selected entries.
    Returns:
        [B, T, pool_size * prompt_length] bool; entry ``i`` owns columns ``i*Lp : (i+1)*Lp``.
    """
    chosen = torch.zeros(*indices.shape[:-1], pool_size, dtype=torch.bool, device=indices.device)
    chosen.scatter_(-1, indices, True)
    return chosen.repeat_interleave(prompt_length, dim=-1)
