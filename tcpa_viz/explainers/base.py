"""The explainer base class, the :class:`Explanation` it returns, and the explainer registry.

An explainer maps images ``[B, C, H, W]`` and target classes to patch relevance ``[B, h, w]``. Methods that
follow information through the attention also say how much of it reached prompt key columns
(``.prompts``) and the prefix tokens (``.prefix``), so that nothing that left the patch tokens is hidden.
Each method is one small module with a subclass of :class:`Explainer` decorated with
:func:`register_explainer`; :func:`tcpa_viz.explain` looks it up by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from tcpa_core.errors import TCPAError, UnsupportedModelError
from tcpa_core.model import PromptedViT, unwrap_model

if TYPE_CHECKING:
    from tcpa_core.layout import TokenLayout

Target = int | Sequence[int] | torch.Tensor | None
"""Target class: one class for every image, one per image (``[B]``), or ``None`` for the predicted class."""


class ExplanationError(TCPAError, ValueError):
    """An explanation request that cannot work (unknown method, target out of range, mismatched maps)."""


@dataclass
class Explanation:
    """Relevance of one batch of images for their target classes.

    Attributes:
        method: the explainer's registry name.
        patches: ``[B, h, w]`` relevance of every patch for the target class (read from the row of the
            token the head reads: the CLS token, or the mean over patch rows for average-pooled models).
        prompts: ``[B, P]`` relevance that reached the prompt key columns, summed over blocks (``P`` is the
            number of prompt key columns of a block, in :class:`~tcpa_core.layout.TokenLayout` order), or
            ``None`` for the model without prompts and for input-space methods.
        prompts_per_layer: ``[B, L, P]`` the same per block, or ``None``.
        prefix: ``[B, num_prefix]`` relevance left on the prefix tokens (CLS first, then registers), or ``None``.
        target: ``[B]`` the class every row explains.
        logits: ``[B, num_classes]`` the model's logits on the images.
        layout: the token layout of the model on these images.
        extras: method-specific values (e.g. ``convergence_delta`` ``[B]`` for integrated gradients).
    """

    method: str
    patches: torch.Tensor
    prompts: torch.Tensor | None
    target: torch.Tensor
    logits: torch.Tensor
    layout: TokenLayout
    prompts_per_layer: torch.Tensor | None = None
    prefix: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def totals(self) -> dict[str, torch.Tensor]:
        """``[B]`` total relevance on the patches, the prompts and the prefix (zero where not reported)."""
        zero = torch.zeros_like(self.patches.flatten(1)[:, 0])
        return {
            "patches": self.patches.flatten(1).sum(1),
            "prompts": zero if self.prompts is None else self.prompts.sum(1),
            "prefix": zero if self.prefix is None else self.prefix.sum(1),
        }


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next(iter(model.parameters()), torch.empty(0)).device


def resolve_target(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """``[B]`` long tensor of target classes on the logits' device; ``None`` -> the predicted classes."""
    batch, classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=-1)
    t = torch.as_tensor(target, dtype=torch.long).to(logits.device).flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ExplanationError(f"got {t.numel()} targets for {batch} images; give one class or one per image.")
    if bool(((t < 0) | (t >= classes)).any()):
        raise ExplanationError(f"target classes must be in [0, {classes - 1}], got {t.tolist()}.")
    return t.clone()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode while the block runs (explanations of a model, not of dropout noise)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def readout_row(model: nn.Module, layout: TokenLayout, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[T]`` weights of the query rows (``T = prefix + patches``) that the classification head reads.

    timm's ``global_pool="token"`` reads the CLS token (one-hot on row 0); ``"avg"`` averages the patch
    tokens (``1 / Np`` on every patch row). Other poolings have no row of the attention to read from.
    """
    pool = getattr(getattr(model, "backbone", model), "global_pool", "token")
    row = torch.zeros(layout.num_queries, dtype=dtype)
    if pool == "token" and layout.has_cls_token:
        row[0] = 1.0
    elif pool == "avg":
        row[layout.num_prefix:] = 1.0 / layout.num_patches
    else:
        raise UnsupportedModelError(
            f"attention explanations read the row of the token the head uses; global_pool={pool!r} has none "
            "(supported: 'token' with a CLS token, 'avg'). Use method='integrated-gradients'."
        )
    return row


class Explainer(ABC):
    """Base class: ``Explainer(model)(images, target)`` -> :class:`Explanation`.

    The call checks the images, moves them to the model's device (the explanation follows the model: CPU
    or GPU), runs the model in eval mode and calls :meth:`explain_batch`. Subclasses set ``name`` and
    ``description`` and implement :meth:`explain_batch`.
    """

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, model: nn.Module, **options: Any) -> None:
        self.model: PromptedViT = unwrap_model(model)
        self.options = options

    def __call__(self, images: torch.Tensor, target: Target = None) -> Explanation:
        self.model.check_images(images)
        images = images.to(model_device(self.model))
        with eval_mode(self.model):
            return self.explain_batch(images, target)

    def layout(self, images: torch.Tensor) -> TokenLayout:
        return self.model.token_layout(self.model.grid_size(images))

    @abstractmethod
    def explain_batch(self, images: torch.Tensor, target: Target) -> Explanation:
        """Explain ``images`` (already checked, on the model's device, model in eval mode)."""


EXPLAINERS: dict[str, type[Explainer]] = {}
"""Registry: method name -> explainer class, in registration order."""


def register_explainer(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator adding an :class:`Explainer` subclass to :data:`EXPLAINERS` under ``cls.name``."""
    if cls.name in EXPLAINERS:
        raise ValueError(f"an explainer named {cls.name!r} is already registered")
    EXPLAINERS[cls.name] = cls
    return cls


def get_explainer(name: str) -> type[Explainer]:
    """The explainer class registered as ``name`` (:class:`ExplanationError` for an unknown name)."""
    try:
        return EXPLAINERS[name]
    except KeyError:
        raise ExplanationError(f"unknown explanation method {name!r}; choose from {', '.join(EXPLAINERS)}.") from None


def list_explainers() -> list[str]:
    """Names of the registered explainers, in registration order."""
    return list(EXPLAINERS)


def explain(model: nn.Module, images: torch.Tensor, target: Target = None, method: str = "relevance",
            **options: Any) -> Explanation:
    """Explain ``images`` ``[B, C, H, W]`` for ``target`` (``None``: the predicted class) with ``method``
    (one of :func:`list_explainers`); ``options`` go to the explainer (e.g. ``n_steps`` for integrated
    gradients). Returns an :class:`Explanation` whose ``.patches`` is ``[B, h, w]``."""
    return get_explainer(method)(model, **options)(images, target)


