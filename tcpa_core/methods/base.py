"""``PromptMethod``: what one prompting method is, and the registry of methods.

A method says, in one place: the ``PromptConfig`` fields it uses and how they are validated, the trainable
prompt module it adds (``build_prompts``), how the residual stream enters and leaves the blocks, how one
block runs (``run_block``: fast path, and the explicit capture path when an attention hook is attached), its
token layout (``key_columns``), whether it has prompt pools and token matching, its display name and role.
``PromptedViT`` only asks the method; adding a method is one file that subclasses ``PromptMethod`` and
decorates it with :func:`register_method`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

import torch
from torch import nn

from ..attention import sequence_block_explicit
from ..errors import PromptConfigError
from ..hooks import BLOCK_HOOKS

if TYPE_CHECKING:
    from ..config import PromptConfig
    from ..model import PromptedViT

Role = Literal["baseline", "tcpa"]
ROLES: tuple[str, ...] = ("baseline", "tcpa")

#: Fields every method reads (the input prompt is applied by the model for any method that sets it).
COMMON_FIELDS: tuple[str, ...] = ("input_prompt", "pad_size")
POOL_FIELDS: tuple[str, ...] = ("cls_pool_size", "image_pool_size", "prompt_length", "prompt_dropout")
TOKEN_FIELDS: tuple[str, ...] = ("num_prompts", "prompt_dropout")


class PromptMethod:
    """Base class of a prompting method (one subclass per method, registered by name).

    Class attributes:
        name:           registry name (``PromptConfig(method=name)``), lower case.
        display_name:   name for figures and the dashboard (``"VPT-deep"``, ``"TCPA"``).
        role:           ``"baseline"`` or ``"tcpa"`` (the TCPA family: per-block CLS/image prompt pools).
        has_pools:      the model has ``PromptPools`` (``model.prompts.cls_prompts`` ...).
        token_matching: tokens select pool entries by key similarity (``cls_assign``/``image_assign`` exist).
        config_fields:  the ``PromptConfig`` fields the method reads.
        default_input_prompt: input-space prompt used when ``config.input_prompt`` is None (VP: ``"pad"``).
        description:    one line for ``--help`` texts and the dashboard.
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    role: ClassVar[Role] = "baseline"
    has_pools: ClassVar[bool] = False
    token_matching: ClassVar[bool] = False
    config_fields: ClassVar[tuple[str, ...]] = COMMON_FIELDS
    default_input_prompt: ClassVar[str | None] = None
    description: ClassVar[str] = ""

    # ------------------------------------------------------------------------------- configuration
    def validate(self, config: PromptConfig) -> None:
        """Raise ``PromptConfigError`` (with what to do) when ``config`` cannot work for this method.
        Types and generic ranges of every field are checked by ``PromptConfig`` before this runs."""

    def resolve(self, config: PromptConfig) -> PromptMethod:
        """The method ``config`` really describes (``tcpa`` with ``fourier=True`` is ``vfpt+tcpa``)."""
        return self

    def prepare(self, config: PromptConfig) -> None:
        """Normalise ``config`` in place when it is created (e.g. ``vfpt+tcpa`` sets ``fourier=True``)."""

    def input_prompt(self, config: PromptConfig) -> str | None:
        """The input-space prompt to build (``None``, ``"pad"`` or ``"conv"``)."""
        return config.input_prompt if config.input_prompt is not None else self.default_input_prompt

    # ------------------------------------------------------------------------------- modules
    def build_prompts(self, config: PromptConfig, depth: int, dim: int, patch_size: tuple[int, int]
                      ) -> nn.Module | None:
        """The trainable prompt module (``model.prompts``), or None."""
        return None

    def key_columns(self, model: PromptedViT) -> tuple[int, int, int]:
        """Prompt key columns of a block: ``(cls_pool, image_pool, shared)`` (see ``TokenLayout``)."""
        return 0, 0, 0

    def hook_layers(self, name: str, depth: int) -> tuple[int, ...]:
        """Blocks in which the per-block hook point ``name`` fires for this method (empty: never)."""
        return tuple(range(depth)) if name in self.hook_names() else ()

    def hook_names(self) -> tuple[str, ...]:
        """Per-block hook points this method fires."""
        return ("resid_pre", "attn_raw", "mask", "attn")

    # ------------------------------------------------------------------------------- forward
    def enter_stream(self, model: PromptedViT, x: torch.Tensor) -> torch.Tensor:
        """The residual stream after the embedding ``[B, prefix+Np, D]`` as the blocks carry it."""
        return x

    def leave_stream(self, model: PromptedViT, x: torch.Tensor) -> torch.Tensor:
        """The stream after the last block back to ``[B, prefix+Np, D]`` for the final norm and head."""
        return x

    def run_block(self, model: PromptedViT, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``layer`` on the stream ``x``: ``(output stream, pool-loss term)``."""
        x = model.block_hooks(layer).resid_pre(x)
        return self.sequence_block(model, layer, x, 0), x.new_zeros(())

    def head_rows(self, model: PromptedViT, layer: int, x: torch.Tensor, rows: int) -> torch.Tensor:
        """Rows ``0..rows-1`` of block ``layer``'s output as the final norm sees them (after
        :meth:`leave_stream`), ``[B, rows, D]``. This default runs the whole block; a method that can compute
        those query rows alone overrides it (after the last block a class-token head reads row 0 only)."""
        return self.leave_stream(model, self.run_block(model, layer, x)[0])[:, :rows]

    @staticmethod
    def sequence_block(model: PromptedViT, layer: int, x: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """timm's block ``layer`` on a full sequence ``[prefix | prompts | patches]`` in which prompts are
        queries too (``num_prompts`` of them); explicit attention when an attention hook is attached."""
        block, hooks = model.block(layer), model.block_hooks(layer)
        if not hooks.wants_attention:
            out: torch.Tensor = block(x)
            return out
        return sequence_block_explicit(block, x, model.num_prefix, num_prompts, hooks)

    def __repr__(self) -> str:
        return f"<PromptMethod {self.name!r} ({self.display_name}, {self.role})>"


# ------------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, PromptMethod] = {}
M = TypeVar("M", bound=type[PromptMethod])


def register_method(cls: M) -> M:
    """Class decorator: register a ``PromptMethod`` subclass under its ``name`` (an instance is stored).

    Raises ``PromptConfigError`` for a missing or taken name, an unknown role or a missing display name.
    """
    if not (isinstance(cls, type) and issubclass(cls, PromptMethod)):
        raise PromptConfigError(f"register_method takes a PromptMethod subclass, got {cls!r}.")
    name = cls.name
    if not isinstance(name, str) or not name or name != name.strip().lower():
        raise PromptConfigError(f"{cls.__name__}.name must be a non-empty lower-case string, got {name!r}.")
    if name in _REGISTRY:
        raise PromptConfigError(
            f"a method named {name!r} is already registered ({type(_REGISTRY[name]).__name__}); choose another "
            "name or unregister_method() it first."
        )
    if cls.role not in ROLES:
        raise PromptConfigError(f"{cls.__name__}.role must be one of {ROLES}, got {cls.role!r}.")
    if not cls.display_name:
        raise PromptConfigError(f"{cls.__name__} needs a display_name.")
    unknown = [n for n in cls().hook_names() if n not in BLOCK_HOOKS]
    if unknown:
        raise PromptConfigError(f"{cls.__name__}.hook_names() lists unknown hook points {unknown}.")
    _REGISTRY[name] = cls()
    return cls


def unregister_method(name: str) -> None:
    """Remove a registered method (for tests and plugins); ``PromptConfigError`` when it is not registered."""
    get_method(name)
    del _REGISTRY[name]


def get_method(name: str) -> PromptMethod:
    """The registered method ``name``; ``PromptConfigError`` naming the choices when there is none."""
    if not isinstance(name, str):
        raise PromptConfigError(f"method must be a string such as 'tcpa', got {type(name).__name__} {name!r}.")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PromptConfigError(
            f"Unknown method {name!r}; choose one of {', '.join(_REGISTRY)}."
        ) from None


def list_methods(role: str | None = None) -> list[str]:
    """Registered method names in registry order; ``role`` ``"baseline"`` or ``"tcpa"`` filters them."""
    if role is not None and role not in ROLES:
        raise PromptConfigError(f"role must be one of {ROLES} or None, got {role!r}.")
    return [name for name, method in _REGISTRY.items() if role is None or method.role == role]
