"""PromptedViT: a frozen timm VisionTransformer with TCPA or VPT-style prompts, and ``build_model``."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, cast

import timm
import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from .config import PromptConfig
from .errors import BackboneArgumentError, CheckpointError, InputShapeError, PromptConfigError, UnsupportedModelError
from .hooks import BlockEdit, BlockHooks, HookPoint
from .layout import TokenLayout
from .methods import PromptMethod
from .prompts import ConvPrompt, PadPrompt, PromptPools, PromptTokens, prompt_dropout

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
        if not isinstance(config, PromptConfig):
            raise PromptConfigError(f"config must be a PromptConfig, got {type(config).__name__}.")
        config.validate()
        num_classes = _check_num_classes(num_classes)
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
        self.spec: PromptMethod = config.spec
        self.prompts: PromptPools | PromptTokens | nn.Module | None = self.spec.build_prompts(
            config, depth, dim, patch_size)

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
        self._block_edits: dict[int, BlockEdit] | None = None

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
        cls_cols, image_cols, shared = self.spec.key_columns(self)
        return TokenLayout(num_prefix=self.num_prefix, grid_size=(int(grid_size[0]), int(grid_size[1])),
                           num_cls_prompt_keys=cls_cols,
                           num_image_prompt_keys=image_cols, num_shared_prompt_keys=shared,
                           prompt_length=self.config.prompt_length, has_cls_token=self.backbone.cls_token is not None)

    def block_edit(self, layer: int) -> BlockEdit | None:
        """The intervention active on block ``layer`` (set by :func:`tcpa_core.intervene`), or None."""
        edits = self._block_edits
        return None if edits is None else edits.get(layer)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the backbone's weights (inputs are cast to it)."""
        return self.backbone.patch_embed.proj.weight.dtype

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` as the backbone takes them; InputShapeError unless it is a floating [B, C, H, W] batch
        of the right size. Floating inputs of another dtype (float64, float16, bfloat16) are cast to the
        backbone's dtype (:attr:`dtype`); integer, bool and complex tensors are refused."""
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
        if images.shape[0] == 0:
            raise InputShapeError("got an empty batch (0 images); pass at least one image.")
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
        return images if images.dtype == self.dtype else images.to(self.dtype)

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, images: torch.Tensor, return_pool_loss: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, num_classes]``; with ``return_pool_loss`` also the pool loss (scalar; sum over
        blocks of the CLS and image matching distances, zero for methods without token matching)."""
        x, pool_loss = self.run_blocks(self.embed(images))
        logits = self.head_from_tokens(x)
        return (logits, pool_loss) if return_pool_loss else logits

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-logits features ``[B, D]`` (what the head sees)."""
        return self.pre_logits(self.run_blocks(self.embed(images))[0])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Checked images ``[B, C, H, W]`` -> the residual stream entering block 0, ``[B, prefix+Np, D]``
        (input prompt, patch and position embedding; VPT-shallow appends its prompts after the prefix)."""
        images = self.check_images(images)
        self.hook_layout(self.token_layout(self.grid_size(images)))
        bb = self.backbone
        if self.input_prompt is not None:
            images = self.input_prompt(images)
        x = bb._pos_embed(bb.patch_embed(images))
        return self.spec.enter_stream(self, bb.norm_pre(bb.patch_drop(x)))

    def run_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``start`` to ``stop - 1`` (Python slice semantics, negative allowed) on the stream ``x``
        -> ``(stream, pool_loss)`` with the pool loss summed over those blocks."""
        pool_loss = x.new_zeros(())
        for layer in range(self.depth)[start:stop]:
            x, loss = self.spec.run_block(self, layer, x)
            pool_loss = pool_loss + loss
        return x, pool_loss

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Stream after the last block -> pre-logits features ``[B, D]`` (``features`` hook point)."""
        return self._features(self.spec.leave_stream(self, x))

    def _features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block ``[B, prefix+Np, D]`` (or the prefix rows alone for a class-token
        head) -> final norm, pooling, ``features`` hook point, ``[B, D]``."""
        bb = self.backbone
        out: torch.Tensor = self.hook_features(bb.forward_head(bb.norm(tokens), pre_logits=True))
        return out

    def logits_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Logits ``[B, num_classes]`` from the stream ``x`` entering block ``start`` (negative allowed), equal to
        ``head_from_tokens(run_blocks(x, start)[0])``. When the head reads the class token alone
        (``global_pool='token'``), the last block computes only that row where the method can
        (:meth:`PromptMethod.head_rows`): the batched reruns of interventions use this."""
        from .capture import check_layer

        bb = self.backbone
        first, last = check_layer(start, self.depth, "logits_from(start)", PromptConfigError), self.depth - 1
        if bb.global_pool != "token" or getattr(bb, "attn_pool", None) is not None or not self.num_prefix:
            return self.head_from_tokens(self.run_blocks(x, first)[0])
        x = self.run_blocks(x, first, last)[0]
        out: torch.Tensor = self.head(self._features(self.spec.head_rows(self, last, x, 1)))
        return out

    def head_from_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Stream after the last block -> logits ``[B, num_classes]``."""
        out: torch.Tensor = self.head(self.pre_logits(x))
        return out

    def prompt_batch(self, prompts: torch.Tensor, batch: int) -> torch.Tensor:
        """[P, D] -> [B, P, D] with prompt dropout while training, [1, P, D] otherwise."""
        if self.training and self.config.prompt_dropout > 0:
            return prompt_dropout(prompts.expand(batch, -1, -1), self.config.prompt_dropout, True)
        return prompts.unsqueeze(0)


def unwrap_model(model: nn.Module) -> PromptedViT:
    """The ``PromptedViT`` itself, or the one inside a ``DistributedDataParallel`` wrapper."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(inner, PromptedViT):
        raise UnsupportedModelError(
            f"expected a PromptedViT (from tcpa_core.build_model or load_checkpoint), got {type(inner).__name__}; "
            "wrap a timm ViT with build_model(vit, PromptConfig(method='none')) first."
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
    if config is None:
        config = PromptConfig()
    elif not isinstance(config, PromptConfig):
        raise PromptConfigError(
            f"config must be a PromptConfig, got {type(config).__name__}; build one with "
            "PromptConfig(method='tcpa', ...) (or PromptConfig.from_dict(d) for a dict)."
        )
    if num_classes is not None:
        num_classes = _check_num_classes(num_classes)
    if not isinstance(pretrained, bool):
        raise PromptConfigError(f"pretrained must be True or False, got {type(pretrained).__name__} {pretrained!r}.")
    if checkpoint is not None and (not isinstance(checkpoint, str | Path) or not str(checkpoint).strip()):
        raise PromptConfigError(
            f"checkpoint must be the path of a backbone weight file (str or Path), got {checkpoint!r}."
        )
    if isinstance(model, str):
        backbone = _create_backbone(model, pretrained, num_classes, timm_kwargs)
        name: str | None = model
    elif isinstance(model, nn.Module):
        if timm_kwargs:
            raise UnsupportedModelError(
                f"timm keyword arguments {sorted(timm_kwargs)} only apply when the model is given by name; this "
                "backbone is already built, so create it with them (or pass its timm name)."
            )
        if pretrained:
            raise UnsupportedModelError(
                "pretrained=True only applies when the model is given by name; load weights into the module "
                "yourself or pass checkpoint=FILE."
            )
        name, backbone = None, model
    else:
        raise UnsupportedModelError(
            f"model must be a timm model name (e.g. 'vit_base_patch16_224') or a timm VisionTransformer, got "
            f"{type(model).__name__} {model!r}."
        )
    vit = _check_backbone(backbone)
    if checkpoint is not None:
        from .weights_io import load_backbone_weights

        load_backbone_weights(vit, checkpoint)
    if num_classes is None:
        num_classes = vit.num_classes
    if not num_classes:
        raise PromptConfigError("num_classes must be given (the backbone has no classifier head): e.g. num_classes=10.")
    return PromptedViT(vit, config, num_classes, backbone_name=name)


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise PromptConfigError(
            f"num_classes must be a positive integer, got {type(num_classes).__name__} {num_classes!r}."
        )
    if num_classes < 1:
        raise PromptConfigError(f"num_classes must be >= 1, got {num_classes}.")
    return int(num_classes)


def _create_backbone(name: str, pretrained: bool, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` with its failures turned into named errors."""
    if not name.strip():
        raise UnsupportedModelError("model is an empty name; pass a timm ViT name such as 'vit_base_patch16_224'.")
    try:
        backbone: nn.Module = timm.create_model(name, pretrained=pretrained, num_classes=num_classes or 0, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UnsupportedModelError(
                f"timm knows no model {name!r}; list ViTs with timm.list_models('vit_*')."
            ) from err
        if pretrained:
            raise CheckpointError(
                f"could not load timm's pretrained weights of {name!r} ({str(err).splitlines()[0]}); without "
                "internet pass a local weight file with checkpoint=FILE (--checkpoint) instead."
            ) from err
        raise BackboneArgumentError(
            f"timm could not build {name!r} with {kwargs or 'its defaults'}: {str(err).splitlines()[0]}."
        ) from err
    except (TypeError, ValueError, AssertionError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BackboneArgumentError(
            f"timm rejected the backbone arguments {kwargs} for {name!r}: {detail}. Check the names and values "
            "against timm's VisionTransformer (e.g. img_size=224, dynamic_img_size=True)."
        ) from err
    except OSError as err:
        raise CheckpointError(
            f"could not fetch timm's pretrained weights of {name!r} ({err}); without internet pass a local "
            "weight file with checkpoint=FILE (--checkpoint) instead."
        ) from err
    return backbone
