"""Block computation with prompts as extra keys, and the TCPA masked attention.

TCPA attention of a query row ``i`` over keys ``j`` (prefix, prompts, patches)::

    A_ij = softmax_j(q_i k_j * scale)        # over ALL keys, selected or not
    out_i = sum_j A_ij * M_ij * v_j           # M: 0/1 mask, rows are NOT renormalised

Two exact ways of computing it:
* explicit: build ``A`` and ``A * M`` (``[B, H, Q, K]``); used when attention is captured.
* fused: ``scaled_dot_product_attention`` over the keys ``[tokens | prompts | prompts]`` with values
  ``[v_tokens | v_prompts | 0]``: row ``i`` sees the first copy of the prompts it selected and the
  second (zero-valued) copy of the prompts it did not. Every prompt enters the softmax denominator
  exactly once, only selected ones reach the output, so ``out = (A * M) v`` exactly. The additive mask
  (0 / -inf) is ``[B, 1, Q, K + P]``, shared by the heads; no attention row is computed for prompt queries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block

if TYPE_CHECKING:
    from .hooks import BlockHooks


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """[B, N, H*hd] -> [B, H, N, hd]."""
    return x.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2)


def project_qkv(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of normalised tokens ``x`` [B, N, D], each [B, H, N, hd] (q/k norm applied)."""
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    return attn.q_norm(_heads(attn, q)), attn.k_norm(_heads(attn, k)), _heads(attn, v)


def project_kv(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values only (no queries) of normalised tokens ``x`` [B, P, D], each [B, H, P, hd]."""
    width = attn.num_heads * attn.head_dim
    bias = attn.qkv.bias[width:] if attn.qkv.bias is not None else None
    k, v = F.linear(x, attn.qkv.weight[width:], bias).chunk(2, dim=-1)
    return attn.k_norm(_heads(attn, k)), _heads(attn, v)


def project_q(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Queries only of normalised tokens ``x`` [B, R, D] -> [B, H, R, hd] (q norm applied)."""
    width = attn.num_heads * attn.head_dim
    bias = attn.qkv.bias[:width] if attn.qkv.bias is not None else None
    return attn.q_norm(_heads(attn, F.linear(x, attn.qkv.weight[:width], bias)))


def expand_mask(allowed: torch.Tensor, num_prefix: int, num_patches: int) -> torch.Tensor:
    """Full TCPA mask ``[B, Q, K]`` from the prompt-column selection ``allowed`` [B, Q, P]:
    every query sees all prefix and patch keys."""
    b, q, _ = allowed.shape
    ones = allowed.new_ones
    return torch.cat([ones(b, q, num_prefix), allowed, ones(b, q, num_patches)], dim=-1)


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None,
    hooks: BlockHooks | None = None, key_present: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention with explicit matrices.

    Args:
        q: [B, H, Q, hd]; k, v: [B, H, K, hd]; mask: [B, Q, K] bool (same for every head) or None.
        hooks: the block's hook points; ``attn_raw``, ``mask`` and ``attn`` run here, before their value is
            used (the value the ``attn`` hook returns is the one multiplied with ``v``).
        key_present: [K] bool; False keys are left out of the softmax (removed prompts).
    Returns:
        output [B, H, Q, hd], attention before the mask [B, H, Q, K], attention after the mask.
    """
    logits = (q * scale) @ k.transpose(-2, -1)
    if key_present is not None:
        logits = logits.masked_fill(~key_present, float("-inf"))
    raw = logits.softmax(dim=-1)
    if hooks is not None:
        raw = hooks.attn_raw(raw)
        if mask is not None:
            mask = hooks.mask(mask)
    masked = raw if mask is None else raw * mask.unsqueeze(1).to(raw.dtype)
    if hooks is not None:
        masked = hooks.attn(masked)
    return masked @ v, raw, masked


def fused_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prompt_k: torch.Tensor,
    prompt_v: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(A * M) v`` through ``scaled_dot_product_attention`` (see the module docstring).

    Args:
        q: [B, H, R, hd] queries of the first ``R <= N`` tokens; k, v: [B, H, N, hd] of the tokens (prefix +
            patches).
        prompt_k, prompt_v: [B, H, P, hd] of the prompts.
        allowed: [B or 1, R, P] bool, True where query row ``r`` selected prompt column ``p``.
        present: [P] bool or None; False prompt columns are left out of the softmax (removed prompts).
    Returns:
        [B, H, R, hd]
    """
    b, rows, n, p = q.shape[0], q.shape[2], k.shape[2], prompt_k.shape[2]
    keys = torch.cat([k, prompt_k, prompt_k], dim=2)
    values = torch.cat([v, prompt_v, prompt_v.new_zeros(()).expand_as(prompt_v)], dim=2)
    bias = q.new_zeros(b, 1, rows, n + 2 * p)
    bias[:, 0, :, n:n + p].masked_fill_(~allowed, float("-inf"))
    bias[:, 0, :, n + p:].masked_fill_(allowed, float("-inf"))
    if present is not None:
        bias[:, 0, :, n:].masked_fill_(~present.repeat(2), float("-inf"))
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=scale)


def block_attention(block: Block) -> Attention:
    """The attention module of a timm ``Block`` (timm types it as a plain ``nn.Module``)."""
    return cast(Attention, block.attn)


def _finish_block(block: Block, x: torch.Tensor, h: torch.Tensor, heads_out: torch.Tensor) -> torch.Tensor:
    """Output projection, residuals and MLP. ``x`` block input, ``h`` = norm1(x), ``heads_out`` [B,H,N,hd]."""
    attn = block_attention(block)
    out = attn.norm(heads_out.transpose(1, 2).flatten(2))
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(h).sigmoid()
    out = attn.proj_drop(attn.proj(out))
    x = x + block.drop_path1(block.ls1(out))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def block_explicit(
    block: Block,
    x: torch.Tensor,
    num_prefix: int,
    prompts: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    hooks: BlockHooks | None = None,
    present: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One timm ``Block`` with explicit attention matrices.

    Args:
        x: [B, N, D] block input; every row is a query.
        prompts: [B or 1, P, D] key/value-only prompt tokens inserted after the ``num_prefix`` first keys.
        allowed: [B or 1, N, P] bool prompt-column selection (None: every prompt visible).
        hooks: the block's hook points (``attn_raw``, ``mask``, ``attn`` run before their value is used).
        present: [P] bool or None; False prompt columns are left out of the softmax.
    Returns:
        block output [B, N, D], attention before and after the mask [B, H, N, K], mask [B, N, K] or None.
    """
    attn = block_attention(block)
    h = block.norm1(x)
    q, k, v = project_qkv(attn, h)
    mask = None
    key_present = None
    if prompts is not None:
        pk, pv = project_kv(attn, block.norm1(prompts))
        pk, pv = pk.expand(x.shape[0], -1, -1, -1), pv.expand(x.shape[0], -1, -1, -1)
        k = torch.cat([k[:, :, :num_prefix], pk, k[:, :, num_prefix:]], dim=2)
        v = torch.cat([v[:, :, :num_prefix], pv, v[:, :, num_prefix:]], dim=2)
        if allowed is not None:
            allowed = allowed.expand(x.shape[0], x.shape[1], -1)
            mask = expand_mask(allowed, num_prefix, x.shape[1] - num_prefix)
        if present is not None:
            ones = present.new_ones
            key_present = torch.cat([ones(num_prefix), present, ones(x.shape[1] - num_prefix)])
    out, raw, masked = explicit_attention(q, k, v, attn.scale, mask, hooks, key_present)
    return _finish_block(block, x, h, out), raw, masked, mask


def sequence_block_explicit(
    block: Block, x: torch.Tensor, num_prefix: int, num_prompts: int, hooks: BlockHooks
) -> torch.Tensor:
    """One timm ``Block`` on a full sequence ``[prefix | prompts | patches]`` (``num_prompts`` prompt rows,
    which are queries too, as in VPT) with explicit attention.

    The hook points see the rows of the prefix and patch queries (``[B, H, Q, K]``, keys = the whole
    sequence; the mask is all True) and what ``attn`` returns is used for those rows; the prompt rows keep
    their own attention. Returns the block output ``[B, S, D]``.
    """
    attn = block_attention(block)
    h = block.norm1(x)
    q, k, v = project_qkv(attn, h)
    full = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    n, p = num_prefix, num_prompts
    rows = torch.cat([full[:, :, :n], full[:, :, n + p:]], dim=2) if p else full
    rows = hooks.attn_raw(rows)
    mask = hooks.mask(torch.ones(rows.shape[0], *rows.shape[2:], dtype=torch.bool, device=rows.device))
    rows = hooks.attn(rows * mask.unsqueeze(1).to(rows.dtype))
    if p:
        full = torch.cat([rows[:, :, :n], full[:, :, n:n + p], rows[:, :, n:]], dim=2)
    else:
        full = rows
    return _finish_block(block, x, h, full @ v)


def block_fused(
    block: Block, x: torch.Tensor, prompts: torch.Tensor, allowed: torch.Tensor | None,
    present: torch.Tensor | None = None, rows: int | None = None,
) -> torch.Tensor:
    """One timm ``Block`` with key/value-only prompts through fused attention (no matrices kept).

    Args:
        x: [B, N, D]; prompts: [B or 1, P, D]; allowed: [B or 1, N, P] bool, or None (all prompts visible).
        present: [P] bool or None (only with ``allowed``); False prompt columns are left out of the softmax.
        rows: compute only the output rows ``0..rows-1`` (their queries; keys and values still come from
            every token), e.g. the class token that is all the head reads after the last block.
    Returns:
        [B, N, D], or [B, rows, D] with ``rows``
    """
    attn = block_attention(block)
    h = block.norm1(x)
    if rows is None:
        q, k, v = project_qkv(attn, h)
        # q is a view of the whole qkv output, which SDPA would keep alive for the backward: an own copy of q
        # lets the qkv output go once its k, v are concatenated with the prompts' (the values are unchanged).
        q = q.contiguous()
    else:
        k, v = project_kv(attn, h)
        x, h = x[:, :rows], h[:, :rows]
        q = project_q(attn, h)
        allowed = None if allowed is None else allowed[:, :rows]
    pk, pv = project_kv(attn, block.norm1(prompts))
    pk, pv = pk.expand(x.shape[0], -1, -1, -1), pv.expand(x.shape[0], -1, -1, -1)
    if allowed is None:
        out = F.scaled_dot_product_attention(q, torch.cat([k, pk], 2), torch.cat([v, pv], 2), scale=attn.scale)
    else:
        out = fused_masked_attention(q, k, v, pk, pv, allowed, attn.scale, present)
    return _finish_block(block, x, h, out)
