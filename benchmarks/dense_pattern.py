"""TCPA computed the way the authors' released model code computes it: the dense pattern, vectorised.

This is benchmark code, not library code: it exists so that ``bench_core.py`` compares the fast path with
an honest implementation of the authors' computational pattern instead of a slow loop reference. Per
block, as in the authors' prompted block (VFPT+TCPA with token matching):

* the block input ``x`` [B, N, D] (N = prefix + patches) picks its prompts by cosine top-k (CLS token
  against the CLS pool, every patch against the image pool), exactly as in ``tcpa_core``;
* the prompt sequence [P, D] is concatenated into the sequence ``[prefix | prompts | patches]``
  (S = N + P tokens) and every token, prompts included, goes through ``norm1`` and the qkv projection,
  so prompts are queries too: the full ``softmax(q k^T * scale)`` ``[B, H, S, S]`` is computed over all keys;
* the prompt query rows are then dropped (``[B, H, N, S]``) and multiplied by a dense per-head float mask
  ``[B, H, N, S]`` built by scatter from the selected indices, without renormalising;
* output projection, residual and MLP run on the N prefix and patch tokens (the authors' block discards
  the prompt rows before ``proj``).

No Python loop over samples or tokens; the only loop is over blocks. Eval mode only (no prompt dropout,
top-k selection, no random warm-up), which is what the benchmark times.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tcpa_core import PromptedViT


def _top_k(tokens: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [B, T, k] of the ``k`` most cosine-similar keys [N, D] for ``tokens`` [B, T, D], and the
    matching distance ``mean(1 - sim)`` over those picks."""
    sim = F.normalize(tokens, dim=-1) @ F.normalize(keys, dim=-1).t()
    top = sim.topk(k, dim=-1)
    return top.indices, (1 - top.values).mean()


def dense_mask(model: PromptedViT, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense TCPA mask ``[B, H, N, S]`` of block ``layer`` (query rows: prefix + patches; key columns:
    ``[prefix | CLS prompts | image prompts | patches]``) built by scatter, and the block's pool-loss term."""
    cfg, pools = model.config, model.prompts
    b, n, _ = x.shape
    npre, lp = model.num_prefix, cfg.prompt_length
    nc, ni = cfg.cls_pool_size * lp, cfg.image_pool_size * lp
    heads = model.backbone.blocks[layer].attn.num_heads
    mask = torch.ones(b, heads, n, n + nc + ni, device=x.device, dtype=x.dtype)
    mask[:, :, :, npre:npre + nc + ni] = 0
    if cfg.method == "r-tcpa":
        mask[:, :, :npre, npre:npre + nc] = 1
        mask[:, :, npre:, npre + nc:npre + nc + ni] = 1
        return mask, x.new_zeros(())
    img_idx, loss = _top_k(x[:, npre:], pools.image_keys[layer], cfg.image_topk)
    img_sel = x.new_zeros(b, n - npre, cfg.image_pool_size).scatter_(-1, img_idx, 1.0).repeat_interleave(lp, -1)
    mask[:, :, npre:, npre + nc:npre + nc + ni] = img_sel.unsqueeze(1)
    if npre:  # every prefix row (CLS and registers) uses the CLS token's selection
        cls_idx, cls_loss = _top_k(x[:, :1], pools.cls_keys[layer], cfg.cls_topk)
        cls_sel = x.new_zeros(b, 1, cfg.cls_pool_size).scatter_(-1, cls_idx, 1.0).repeat_interleave(lp, -1)
        mask[:, :, :npre, npre:npre + nc] = cls_sel.unsqueeze(1)
        loss = loss + cls_loss
    return mask, loss


def dense_block(block: nn.Module, x: torch.Tensor, prompts: torch.Tensor, mask: torch.Tensor,
                num_prefix: int) -> torch.Tensor:
    """One pre-norm timm ``Block`` in the dense pattern.

    Args:
        x: [B, N, D] block input (prefix + patches); prompts: [P, D]; mask: [B, H, N, N + P].
    Returns:
        [B, N, D]
    """
    attn = block.attn
    b, n, d = x.shape
    p = prompts.shape[0]
    seq = torch.cat([x[:, :num_prefix], prompts.expand(b, -1, -1), x[:, num_prefix:]], dim=1)
    h = block.norm1(seq)
    q, k, v = attn.qkv(h).reshape(b, n + p, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    weights = torch.cat([weights[:, :, :num_prefix], weights[:, :, num_prefix + p:]], dim=2) * mask
    out = attn.norm((weights @ v).transpose(1, 2).reshape(b, n, d))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(torch.cat([h[:, :num_prefix], h[:, num_prefix + p:]], dim=1)).sigmoid()
    x = x + block.ls1(attn.proj(out))
    return x + block.ls2(block.mlp(block.norm2(x)))


def dense_pattern_forward(model: PromptedViT, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, C] and pool loss of a ``tcpa`` / ``r-tcpa`` ``model`` (Fourier or not, no input prompt),
    computed in the dense pattern with the model's own weights. Same values as ``model(images,
    return_pool_loss=True)`` in eval mode."""
    cfg, bb = model.config, model.backbone
    if cfg.method not in ("tcpa", "r-tcpa") or model.input_prompt is not None:
        raise ValueError(f"the dense pattern covers tcpa / r-tcpa without input prompt, not {cfg.method!r}")
    x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(images))))
    pool_loss = x.new_zeros(())
    for layer, block in enumerate(bb.blocks):
        mask, loss = dense_mask(model, layer, x)
        pool_loss = pool_loss + loss
        pools = model.prompts
        prompts = torch.cat([pools.cls_prompts[layer].flatten(0, 1), pools.image_prompts[layer].flatten(0, 1)])
        if cfg.fourier:
            prompts = torch.fft.fft(torch.fft.fft(prompts, dim=-1), dim=-2).real
        x = dense_block(block, x, prompts, mask, model.num_prefix)
    return model.head(bb.forward_head(bb.norm(x), pre_logits=True)), pool_loss
