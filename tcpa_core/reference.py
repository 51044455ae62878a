"""The authors' dense formulation of TCPA (and VPT-deep), written plainly for verification and benchmarks.

Prompts are concatenated into the sequence ``[prefix | prompts | patches]`` and go through the whole block
(they are queries too, their outputs are thrown away), and the mask is a dense per-head float tensor
``[B, H, S, S]`` multiplied into the softmax. This is deliberately independent of the optimised code in
:mod:`tcpa_core.model` (own matching, own mask, own attention): tests compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import PromptedViT
from .prompts import PromptPools, PromptTokens


def _top_entries(query: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [k] of the ``k`` keys [N, D] most cosine-similar to ``query`` [D], and those similarities."""
    sims = F.cosine_similarity(query.unsqueeze(0), keys, dim=-1)
    order = torch.argsort(sims, descending=True)[:k]
    return order, sims[order]


def _dense_block(block: torch.nn.Module, seq: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Pre-norm block on ``seq`` [B, S, D] with ``softmax(q k^T * scale) * mask`` (mask [B, H, S, S])."""
    attn = block.attn
    b, s, _ = seq.shape
    h = block.norm1(seq)
    qkv = attn.qkv(h).reshape(b, s, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    weights = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
    if mask is not None:
        weights = weights * mask
    out = (weights @ v).transpose(1, 2).reshape(b, s, -1)
    out = attn.norm(out)
    if getattr(attn, "gate", None) is not None:
        out = out * torch.sigmoid(attn.gate(h))
    seq = seq + block.ls1(attn.proj(out))
    return seq + block.ls2(block.mlp(block.norm2(seq)))


def _tcpa_layer_mask(model: PromptedViT, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense per-head mask [B, H, S, S] of block ``layer`` and its pool-loss term, by explicit loops."""
    cfg, pools = model.config, model.prompts
    b, n, _ = x.shape
    npre, lp = model.num_prefix, cfg.prompt_length
    nc, ni = cfg.cls_pool_size * lp, cfg.image_pool_size * lp
    s = n + nc + ni
    mask = torch.ones(b, s, s, device=x.device)
    cls_cols = list(range(npre, npre + nc))
    img_cols = list(range(npre + nc, npre + nc + ni))
    token_rows = list(range(npre)) + list(range(npre + nc + ni, s))
    for row in token_rows:
        mask[:, row, npre:npre + nc + ni] = 0.0
    distances_cls, distances_img = [], []
    for i in range(b):
        if not model.spec.token_matching:
            cls_pick, img_picks = list(range(cfg.cls_pool_size)), [list(range(cfg.image_pool_size))] * (n - npre)
        else:
            cls_idx, cls_sim = _top_entries(x[i, 0], pools.cls_keys[layer], cfg.cls_topk)
            distances_cls.append(1 - cls_sim)
            cls_pick, img_picks = cls_idx.tolist(), []
            for t in range(n - npre):
                idx, sim = _top_entries(x[i, npre + t], pools.image_keys[layer], cfg.image_topk)
                distances_img.append(1 - sim)
                img_picks.append(idx.tolist())
        for row in range(npre):
            for entry in cls_pick:
                for j in range(lp):
                    mask[i, row, cls_cols[entry * lp + j]] = 1.0
        for t, picks in enumerate(img_picks):
            for entry in picks:
                for j in range(lp):
                    mask[i, npre + nc + ni + t, img_cols[entry * lp + j]] = 1.0
    loss = x.new_zeros(())
    if distances_cls:
        loss = torch.cat(distances_cls).mean() + torch.cat(distances_img).mean()
    return mask.unsqueeze(1).expand(b, model.backbone.blocks[layer].attn.num_heads, s, s).contiguous(), loss


def _dense_tcpa_layer_mask_vectorised(model: PromptedViT, layer: int, x: torch.Tensor
                                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as :func:`_tcpa_layer_mask` without Python loops (for benchmarks at ViT-B scale)."""
    cfg, pools = model.config, model.prompts
    b, n, _ = x.shape
    npre, lp = model.num_prefix, cfg.prompt_length
    nc, ni = cfg.cls_pool_size, cfg.image_pool_size
    heads = model.backbone.blocks[layer].attn.num_heads
    if not model.spec.token_matching:
        cls_sel = torch.ones(b, 1, nc, device=x.device)
        img_sel = torch.ones(b, n - npre, ni, device=x.device)
        loss = x.new_zeros(())
    else:
        cls_sim = F.cosine_similarity(x[:, :1, None], pools.cls_keys[layer][None, None], dim=-1)
        img_sim = F.cosine_similarity(x[:, npre:, None], pools.image_keys[layer][None, None], dim=-1)
        cls_top = torch.argsort(cls_sim, dim=-1, descending=True)[..., :cfg.cls_topk]
        img_top = torch.argsort(img_sim, dim=-1, descending=True)[..., :cfg.image_topk]
        cls_sel = torch.zeros_like(cls_sim).scatter(-1, cls_top, 1.0)
        img_sel = torch.zeros_like(img_sim).scatter(-1, img_top, 1.0)
        loss = (1 - cls_sim.gather(-1, cls_top)).mean() + (1 - img_sim.gather(-1, img_top)).mean()
    cls_sel = cls_sel.repeat_interleave(lp, -1)
    img_sel = img_sel.repeat_interleave(lp, -1)
    s = n + (nc + ni) * lp
    mask = torch.ones(b, s, s, device=x.device)
    prefix_rows = torch.cat([cls_sel.expand(b, npre, -1), torch.zeros(b, npre, ni * lp, device=x.device)], -1)
    patch_rows = torch.cat([torch.zeros(b, n - npre, nc * lp, device=x.device), img_sel], -1)
    mask[:, :npre, npre:npre + (nc + ni) * lp] = prefix_rows
    mask[:, npre + (nc + ni) * lp:, npre:npre + (nc + ni) * lp] = patch_rows
    return mask.unsqueeze(1).expand(b, heads, s, s).contiguous(), loss


def reference_forward(model: PromptedViT, images: torch.Tensor, vectorised: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, C] and pool loss of ``model`` computed by the dense formulation.

    Supports models without prompt tokens (``none``, ``vp``), with one set of prompt tokens per block
    (``vpt-deep``; ``vfpt`` with its own FFT of the first ``fourier_fraction`` of them) and with prompt pools
    (``tcpa``, ``r-tcpa``, ``vfpt+tcpa``, ``vp+tcpa``), in eval mode (no prompt dropout, top-k selection).
    The kind of model is read from its trainable modules, not from the method name. ``vectorised`` swaps
    the loop-based mask for a vectorised one (same values) so the reference can run at ViT-B scale.
    """
    cfg, bb = model.config, model.backbone
    tokens = model.prompts.prompts if isinstance(model.prompts, PromptTokens) else None
    pools = isinstance(model.prompts, PromptPools)
    no_prompts = model.prompts is None and model.spec.key_columns(model) == (0, 0, 0)
    if not (no_prompts or pools or (tokens is not None and tokens.shape[0] == model.depth)):
        raise ValueError(
            f"the dense reference covers models without prompts, with per-block prompt tokens and with prompt "
            f"pools, not {model.spec.name!r}"
        )
    fourier_tokens = round(cfg.fourier_fraction * tokens.shape[1]) if tokens is not None and \
        "fourier_fraction" in model.spec.config_fields else 0
    if model.input_prompt is not None:
        images = model.input_prompt(images)
    x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(images))))
    npre = model.num_prefix
    pool_loss = x.new_zeros(())
    for layer, block in enumerate(bb.blocks):
        if no_prompts:
            x = _dense_block(block, x, None)
            continue
        if tokens is not None:
            prompts, mask = tokens[layer], None
            if fourier_tokens:
                prompts = torch.cat([torch.fft.fft2(prompts[:fourier_tokens]).real, prompts[fourier_tokens:]])
        else:
            prompts = torch.cat([model.prompts.cls_prompts[layer].flatten(0, 1),
                                 model.prompts.image_prompts[layer].flatten(0, 1)])
            if cfg.fourier:
                prompts = torch.fft.fft2(prompts).real
            builder = _dense_tcpa_layer_mask_vectorised if vectorised else _tcpa_layer_mask
            mask, loss = builder(model, layer, x)
            pool_loss = pool_loss + loss
        p = prompts.shape[0]
        seq = torch.cat([x[:, :npre], prompts.expand(x.shape[0], -1, -1), x[:, npre:]], dim=1)
        seq = _dense_block(block, seq, mask)
        x = torch.cat([seq[:, :npre], seq[:, npre + p:]], dim=1)
    features = bb.forward_head(bb.norm(x), pre_logits=True)
    return model.head(features), pool_loss
