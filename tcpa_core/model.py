"""PromptedViT: a frozen timm VisionTransformer with TCPA or VPT-style prompts, and ``build_model``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import timm
import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from .attention import block_explicit, block_fused
from .config import PromptConfig
from .errors import CheckpointError, InputShapeError, UnsupportedModelError
from .hooks import BlockHooks, HookPoint
from .layout import TokenLayout
from .matching import select_prompts, selection_to_columns
from .prompts import (
    ConvPrompt,
    PadPrompt,
    PromptPools,
    PromptTokens,
    fourier_transform,
    partial_fourier_transform,
    prompt_dropout,
)

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_ATTN_PARTS = ("qkv", "q_norm", "k_norm", "norm", "proj", "proj_drop", "num_heads", "head_dim", "scale")


def _check_backbone(backbone: nn.Module) -> VisionTransformer:
    """``backbone`` itself when it is a timm ViT of pre-norm blocks (UnsupportedModelError otherwise)."""
    if not isinstance(backbone, VisionTransformer):
        raise UnsupportedModelError(
            f"build_model needs a timm VisionTransformer (e.g. 'vit_base_patch16_224'), got "
            f"{type(backbone).__name__}. Hierarchical or convolutional models have no token sequence to prompt."
        )
    for i, block in enumerate(backbone.blocks):
        missing = [p for p in _BLOCK_PARTS if not hasattr(block, p)]
        missing += [f"attn.{p}" for p in _ATTN_PARTS if not hasattr(getattr(block, "attn", None), p)]
        if missing or type(block).__name__ in ("ResPostBlock", "ParallelScalingBlock", "ParallelThingsBlock"):
            raise UnsupportedModelError(
                f"block {i} of this ViT is a {type(block).__name__} (missing {missing or 'pre-norm layout'}); "
                "only pre-norm timm Blocks with timm Attention are supported."
            )
    return backbone


class PromptedViT(nn.Module):
    """A frozen timm ``VisionTransformer`` with learnable prompts and a new classification head.

    ``forward(images [B, C, H, W]) -> logits [B, num_classes]`` (or ``(logits, pool_loss)``).
    Trainable: ``prompts`` (``PromptPools`` for TCPA, ``PromptTokens`` for VPT/VFPT, None otherwise),
    ``input_prompt`` (VP) and ``head``. The backbone stays frozen and in eval mode.
    Set ``random_selection = True`` for the TCPA warm-up: random prompt selection while in train mode.
    """

    def __init__(self, backbone: VisionTransformer, config: PromptConfig, num_classes: int,
                 backbone_name: str | None = None) -> None:
        super().__init__()
        _check_backbone(backbone)
        config.validate()
        self.config = config
        self.backbone_name = backbone_name or getattr(backbone, "pretrained_cfg", {}).get(
            "architecture", type(backbone).__name__)
        self.num_classes = num_classes
        self.random_selection = False

        dim = backbone.num_features
        head = backbone.head
        if not (isinstance(head, nn.Linear) and head.out_features == num_classes):
            head = nn.Linear(dim, num_classes)
            trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        backbone.head = nn.Identity()
        self.backbone = backbone.requires_grad_(False).eval()
        self.head = head

        depth = len(backbone.blocks)
        patch_size = tuple(backbone.patch_embed.patch_size)
        self.prompts: PromptPools | PromptTokens | None = None
        if config.uses_pools:
            self.prompts = PromptPools(depth, dim, config.cls_pool_size, config.image_pool_size,
                                       config.prompt_length, with_keys=config.uses_token_matching)
        elif config.method in ("vpt-deep", "vfpt"):
            self.prompts = PromptTokens(depth, config.num_prompts, dim, patch_size)
        elif config.method == "vpt-shallow":
            self.prompts = PromptTokens(1, config.num_prompts, dim, patch_size)

        self.input_prompt: nn.Module | None = None
        kind = config.resolved_input_prompt
        img_size = tuple(backbone.patch_embed.img_size)
        if kind == "pad":
            pad = config.pad_size or max(1, round(img_size[0] * 30 / 224))
            self.input_prompt = PadPrompt(img_size, pad, backbone.patch_embed.proj.in_channels)
        elif kind == "conv":
            self.input_prompt = ConvPrompt(backbone.patch_embed.proj.in_channels)

        self.hooks: nn.ModuleList = nn.ModuleList(BlockHooks() for _ in range(depth))
        self.checkpoint_meta: dict[str, Any] = {}
        """The JSON description of the checkpoint this model was loaded from (empty for a new model)."""
        self.hook_features = HookPoint()
        self.hook_layout = HookPoint()

    # ----------------------------------------------------------------------------------------- utils
    backbone: VisionTransformer

    @property
    def num_prefix(self) -> int:
        return self.backbone.num_prefix_tokens

    def block(self, layer: int) -> Block:
        """The timm block ``layer`` of the backbone."""
        return cast(Block, self.backbone.blocks[layer])

    def block_hooks(self, layer: int) -> BlockHooks:
        """The hook points of block ``layer``."""
        return cast(BlockHooks, self.hooks[layer])

    def prompt_pools(self) -> PromptPools:
        """The TCPA prompt pools (TypeError for methods without pools)."""
        if not isinstance(self.prompts, PromptPools):
            raise TypeError(f"method {self.config.method!r} has no prompt pools")
        return self.prompts

    def prompt_tokens(self) -> PromptTokens:
        """The VPT-style prompt tokens (TypeError for methods without them)."""
        if not isinstance(self.prompts, PromptTokens):
            raise TypeError(f"method {self.config.method!r} has no prompt tokens")
        return self.prompts

    @property
    def depth(self) -> int:
        return len(self.backbone.blocks)

    @property
    def data_config(self) -> dict[str, Any]:
        """timm data config of the backbone (input_size, mean, std, interpolation, crop_pct); the input size is
        the one the backbone was built with (timm's pretrained config keeps the size it was released at)."""
        config = timm.data.resolve_data_config({}, model=self.backbone)
        pe = self.backbone.patch_embed
        config["input_size"] = (pe.proj.in_channels, *pe.img_size)
        return config

    def train(self, mode: bool = True) -> PromptedViT:
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly the parameters that are trained (prompts, input prompt, head), detached."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` returned; strict on names and shapes."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        wrong = [n for n in set(params) & set(state) if tuple(params[n].shape) != tuple(state[n].shape)]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"checkpoint does not fit this model (method {self.config.method!r}): missing {missing[:4]}, "
                f"unexpected {unexpected[:4]}, wrong shape {wrong[:4]}. Build the model with the checkpoint's "
                "own config (tcpa_core.load_checkpoint does this)."
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name])

    def grid_size(self, images: torch.Tensor) -> tuple[int, int]:
        pe = self.backbone.patch_embed
        if getattr(self.backbone, "dynamic_img_size", False):
            height, width = pe.dynamic_feat_size((int(images.shape[-2]), int(images.shape[-1])))
            return int(height), int(width)
        return int(pe.grid_size[0]), int(pe.grid_size[1])

    def token_layout(self, grid_size: tuple[int, int]) -> TokenLayout:
        """Layout of the captured attention for an input with this patch grid."""
        cfg, prompts = self.config, self.prompts
        cls_cols = prompts.num_cls_columns if isinstance(prompts, PromptPools) else 0
        image_cols = prompts.num_image_columns if isinstance(prompts, PromptPools) else 0
        shared = prompts.prompts.shape[1] if isinstance(prompts, PromptTokens) else 0
        return TokenLayout(num_prefix=self.num_prefix, grid_size=(int(grid_size[0]), int(grid_size[1])),
                           num_cls_prompt_keys=cls_cols,
                           num_image_prompt_keys=image_cols, num_shared_prompt_keys=shared,
                           prompt_length=cfg.prompt_length, has_cls_token=self.backbone.cls_token is not None)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise InputShapeError unless ``images`` is a float [B, C, H, W] batch the backbone takes."""
        pe = self.backbone.patch_embed
        channels = pe.proj.in_channels
        expected = tuple(pe.img_size)
        if not torch.is_tensor(images) or images.ndim != 4:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise InputShapeError(
                f"expected images as a float tensor [batch, {channels}, {expected[0]}, {expected[1]}], got {shape}; "
                "add a batch dimension with images.unsqueeze(0) for a single image."
            )
        if not images.is_floating_point():
            raise InputShapeError(
                f"expected normalised float images, got dtype {images.dtype}; convert with the transforms of "
                "tcpa_core.data (ToTensor + Normalize with the backbone's mean/std)."
            )
        if images.shape[1] != channels:
            raise InputShapeError(
                f"the backbone takes {channels}-channel images, got {images.shape[1]} channels; convert "
                "grayscale/RGBA images to RGB first (tcpa_core.data.load_image does)."
            )
        size = tuple(images.shape[-2:])
        if getattr(self.backbone, "dynamic_img_size", False):
            patch = tuple(pe.patch_size)
            if not getattr(pe, "dynamic_img_pad", False) and (size[0] % patch[0] or size[1] % patch[1]):
                raise InputShapeError(f"image size {size} is not a multiple of the patch size {patch}.")
        elif size != expected:
            raise InputShapeError(
                f"this backbone takes {expected[0]}x{expected[1]} images, got {size[0]}x{size[1]}; resize them "
                "(tcpa_core.data transforms use the backbone's input size) or build the backbone with "
                "dynamic_img_size=True."
            )
        if self.input_prompt is not None and isinstance(self.input_prompt, PadPrompt) and \
                size != self.input_prompt.image_size:
            raise InputShapeError(f"the padding prompt was built for {self.input_prompt.image_size} images.")

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, images: torch.Tensor, return_pool_loss: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, num_classes]``; with ``return_pool_loss`` also the pool loss (scalar; sum over
        blocks of the CLS and image matching distances, zero for methods without token matching)."""
        features, pool_loss = self._features(images)
        logits = self.head(features)
        return (logits, pool_loss) if return_pool_loss else logits

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-logits features ``[B, D]`` (what the head sees)."""
        return self._features(images)[0]

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        if self.input_prompt is not None:
            images = self.input_prompt(images)
        x = bb._pos_embed(bb.patch_embed(images))
        return bb.norm_pre(bb.patch_drop(x))

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_images(images)
        self.hook_layout(self.token_layout(self.grid_size(images)))
        x = self._embed(images)
        method = self.config.method
        if method in ("tcpa", "r-tcpa"):
            x, pool_loss = self._run_tcpa(x)
        else:
            pool_loss = x.new_zeros(())
            if method in ("vpt-deep", "vfpt"):
                x = self._run_deep_prompts(x)
            elif method == "vpt-shallow":
                x = self._run_shallow_prompts(x)
            else:
                x = self._run_sequence(x, num_prompts=0)
        bb = self.backbone
        features = bb.forward_head(bb.norm(x), pre_logits=True)
        return self.hook_features(features), pool_loss

    def _prompt_batch(self, prompts: torch.Tensor, batch: int) -> torch.Tensor:
        """[P, D] -> [B, P, D] with prompt dropout while training, [1, P, D] otherwise."""
        if self.training and self.config.prompt_dropout > 0:
            return prompt_dropout(prompts.expand(batch, -1, -1), self.config.prompt_dropout, True)
        return prompts.unsqueeze(0)

    def _sequence_block(self, layer: int, x: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """Run block ``layer`` of timm on the full sequence [prefix | prompts | patches] (all are queries),
        recording the attention rows of prefix and patch queries when captured."""
        block, hooks = self.block(layer), self.block_hooks(layer)
        if not hooks.wants_attention:
            return block(x)
        out, raw, _, _ = block_explicit(block, x, self.num_prefix)
        if num_prompts:
            keep = torch.cat([torch.arange(self.num_prefix), torch.arange(self.num_prefix + num_prompts, x.shape[1])])
            raw = raw[:, :, keep.to(x.device)]
        hooks.attn_raw(raw)
        hooks.attn(raw)
        hooks.mask(torch.ones(raw.shape[0], *raw.shape[2:], dtype=torch.bool, device=raw.device))
        return out

    def _run_sequence(self, x: torch.Tensor, num_prompts: int) -> torch.Tensor:
        for layer in range(self.depth):
            x = self._sequence_block(layer, x, num_prompts)
        return x

    def _run_shallow_prompts(self, x: torch.Tensor) -> torch.Tensor:
        n = self.num_prefix
        prompts = self._prompt_batch(self.prompt_tokens().sequence(0), x.shape[0]).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :n], prompts, x[:, n:]], dim=1)
        x = self._run_sequence(x, num_prompts=prompts.shape[1])
        return torch.cat([x[:, :n], x[:, n + prompts.shape[1]:]], dim=1)

    def _run_deep_prompts(self, x: torch.Tensor) -> torch.Tensor:
        n, batch = self.num_prefix, x.shape[0]
        for layer in range(self.depth):
            prompts = self._prompt_batch(self.prompt_tokens().sequence(layer), batch)
            if self.config.method == "vfpt":
                prompts = partial_fourier_transform(prompts, self.config.fourier_fraction)
            num = prompts.shape[1]
            seq = torch.cat([x[:, :n], prompts.expand(batch, -1, -1), x[:, n:]], dim=1)
            out = self._sequence_block(layer, seq, num)
            x = torch.cat([out[:, :n], out[:, n + num:]], dim=1)
        return x

    def _tcpa_selection(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt-column selection ``allowed`` [B or 1, N, P] and this block's pool loss term."""
        pools, cfg, n = self.prompt_pools(), self.config, self.num_prefix
        num_patches = x.shape[1] - n
        hooks = self.block_hooks(layer)
        if not cfg.uses_token_matching:
            cls_rows = torch.cat([x.new_ones(n, pools.num_cls_columns), x.new_zeros(n, pools.num_image_columns)], 1)
            patch_rows = torch.cat([x.new_zeros(num_patches, pools.num_cls_columns),
                                    x.new_ones(num_patches, pools.num_image_columns)], 1)
            return torch.cat([cls_rows, patch_rows]).bool().unsqueeze(0), x.new_zeros(())
        random = self.random_selection and self.training
        assert pools.image_keys is not None and pools.cls_keys is not None  # token matching has keys
        image = select_prompts(x[:, n:], pools.image_keys[layer], cfg.image_topk, random)
        hooks.image_assign(image.indices)
        image_cols = selection_to_columns(image.indices, pools.image_pool_size, cfg.prompt_length)
        patch_rows = torch.cat([image_cols.new_zeros(*image_cols.shape[:2], pools.num_cls_columns), image_cols], -1)
        loss = image.distance()
        if n == 0:
            return patch_rows, loss
        cls = select_prompts(x[:, :1], pools.cls_keys[layer], cfg.cls_topk, random)
        hooks.cls_assign(cls.indices[:, 0])
        cls_cols = selection_to_columns(cls.indices, pools.cls_pool_size, cfg.prompt_length)
        cls_row = torch.cat([cls_cols, cls_cols.new_zeros(x.shape[0], 1, pools.num_image_columns)], -1)
        return torch.cat([cls_row.expand(-1, n, -1), patch_rows], dim=1), loss + cls.distance()

    def _run_tcpa(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool_loss = x.new_zeros(())
        for layer in range(self.depth):
            allowed, loss = self._tcpa_selection(layer, x)
            pool_loss = pool_loss + loss
            prompts = self._prompt_batch(self.prompt_pools().sequence(layer), x.shape[0])
            if self.config.fourier:
                prompts = fourier_transform(prompts)
            block, hooks = self.block(layer), self.block_hooks(layer)
            if hooks.wants_attention:
                x, raw, masked, mask = block_explicit(block, x, self.num_prefix, prompts, allowed)
                hooks.attn_raw(raw)
                hooks.attn(masked)
                hooks.mask(mask)
            else:
                x = block_fused(block, x, prompts, allowed)
        return x, pool_loss


def unwrap_model(model: nn.Module) -> PromptedViT:
    """The ``PromptedViT`` itself, or the one inside a ``DistributedDataParallel`` wrapper."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(inner, PromptedViT):
        raise UnsupportedModelError(
            f"expected a PromptedViT (from tcpa_core.build_model or load_checkpoint), got {type(inner).__name__}."
        )
    return inner


def build_model(
    model: str | VisionTransformer,
    config: PromptConfig | None = None,
    num_classes: int | None = None,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    **timm_kwargs: Any,
) -> PromptedViT:
    """Wrap a timm VisionTransformer with prompts.

    Args:
        model: a timm model name (``"vit_base_patch16_224"``, ``"tcpa_demo_vit"``) or a timm ViT instance.
        config: the prompting method (default: TCPA with the authors' defaults).
        num_classes: classes of the new head (default: the backbone's own head size).
        pretrained: load timm's pretrained weights (needs internet except for ``tcpa_demo_vit``).
        checkpoint: a local backbone weight file (.pth/.pt/.npz/.safetensors) to load instead.
        timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size``, ``dynamic_img_size``).
    """
    config = config or PromptConfig()
    if isinstance(model, str):
        name = model
        try:
            backbone = timm.create_model(name, pretrained=pretrained, num_classes=num_classes or 0, **timm_kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise UnsupportedModelError(
                    f"timm knows no model {name!r}; list ViTs with timm.list_models('vit_*')."
                ) from err
            raise
    else:
        name, backbone = None, model
    vit = _check_backbone(backbone)
    if checkpoint is not None:
        from .weights_io import load_backbone_weights

        load_backbone_weights(vit, checkpoint)
    if num_classes is None:
        num_classes = vit.num_classes
    if not num_classes:
        raise ValueError("num_classes must be given (the backbone has no classifier head).")
    return PromptedViT(vit, config, num_classes, backbone_name=name)
