"""PromptConfig: which prompting method to apply to the frozen backbone, and its sizes."""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import PromptConfigError
from .methods import PromptMethod, get_method, list_methods

Method = str
#: Every built-in method, in registry order (``list_methods()`` also lists methods registered later).
METHODS: tuple[str, ...] = tuple(list_methods())
INPUT_PROMPTS: tuple[str | None, ...] = (None, "pad", "conv")

_INT_FIELDS: dict[str, int] = {  # field -> smallest value any method accepts (methods check their own minimum)
    "cls_pool_size": 0, "image_pool_size": 0, "cls_topk": 0, "image_topk": 0, "prompt_length": 1,
    "num_prompts": 0,
}


def _field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(PromptConfig))


@dataclass
class PromptConfig:
    """Configuration of the prompts added to a frozen timm VisionTransformer.

    Methods (the registry in :mod:`tcpa_core.methods`; ``list_methods()`` lists them):
        ``none``        linear probe: no prompts, only the head is trained.
        ``vpt-shallow`` ``num_prompts`` prompts inserted after the embedding, carried through all blocks.
        ``vpt-deep``    ``num_prompts`` fresh prompts per block, outputs discarded after each block.
        ``vfpt``        VPT-deep where a ``fourier_fraction`` of each block's prompts goes through
                        a 2D FFT (real part) over (sequence, hidden).
        ``vp``          only an input-space prompt (``input_prompt``, "pad" by default).
        ``tcpa``        Token Coordinated Prompt Attention: per-block CLS and image prompt pools,
                        each token attends only to the prompts it selects (top-k cosine to keys).
        ``r-tcpa``      TCPA without token matching: CLS sees all CLS prompts, patches all image prompts.
        ``vfpt+tcpa``   TCPA with Fourier prompts; the same as ``tcpa`` with ``fourier=True``.
        ``vp+tcpa``     TCPA with the padding prompt; the same as ``tcpa`` with ``input_prompt="pad"``.

    ``spec`` is the method as resolved (``tcpa`` with ``fourier=True`` -> ``vfpt+tcpa``, with an input prompt
    -> ``vp+tcpa``), ``display_name`` its name for figures. Defaults of the pool sizes follow the authors'
    scripts (18/18, top-10/10, length 1). Every field is type- and range-checked when the config is created
    (``PromptConfigError`` says what to change); unknown keyword arguments are refused the same way.
    """

    method: Method = "tcpa"
    cls_pool_size: int = 18
    image_pool_size: int = 18
    cls_topk: int = 10
    image_topk: int = 10
    prompt_length: int = 1
    fourier: bool = False
    input_prompt: str | None = None
    num_prompts: int = 10
    fourier_fraction: float = 0.5
    prompt_dropout: float = 0.1
    pad_size: int | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> PromptConfig:
        names = _field_names()
        if len(args) > len(names):
            raise PromptConfigError(
                f"PromptConfig takes at most {len(names)} positional arguments, got {len(args)}; pass fields "
                "by name, e.g. PromptConfig(method='tcpa', cls_pool_size=18)."
            )
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, names, 1))
                     else repr(k) for k in unknown]
            raise PromptConfigError(
                f"PromptConfig has no field {', '.join(hints)}; the fields are {', '.join(names)}."
            )
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------- method
    @property
    def spec(self) -> PromptMethod:
        """The registered method this config describes (resolved: ``tcpa`` + ``fourier`` -> ``vfpt+tcpa``)."""
        return get_method(self.method).resolve(self)

    @property
    def display_name(self) -> str:
        """Name of the method for figures and tables (``"VPT-deep"``, ``"VFPT+TCPA"`` ...)."""
        return self.spec.display_name

    @property
    def uses_pools(self) -> bool:
        return self.spec.has_pools

    @property
    def uses_token_matching(self) -> bool:
        return self.spec.token_matching

    @property
    def resolved_input_prompt(self) -> str | None:
        return self.spec.input_prompt(self)

    # ------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check the type and range of every field, then the method's own rules; ``PromptConfigError``."""
        spec = get_method(self.method)
        for name, low in _INT_FIELDS.items():
            setattr(self, name, _check_int(name, getattr(self, name), low))
        if self.pad_size is not None:
            self.pad_size = _check_int("pad_size", self.pad_size, 1, none_hint=" or None (automatic)")
        if not isinstance(self.fourier, bool):
            raise PromptConfigError(f"fourier must be True or False, got {type(self.fourier).__name__} "
                                    f"{self.fourier!r}.")
        if self.input_prompt not in INPUT_PROMPTS or not isinstance(self.input_prompt, str | None):
            raise PromptConfigError(
                f"Unknown input_prompt {self.input_prompt!r}; choose None, 'pad' or 'conv'."
            )
        self.prompt_dropout = _check_float("prompt_dropout", self.prompt_dropout)
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise PromptConfigError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}.")
        self.fourier_fraction = _check_float("fourier_fraction", self.fourier_fraction)
        if not 0.0 <= self.fourier_fraction <= 1.0:
            raise PromptConfigError(f"fourier_fraction must be in [0, 1], got {self.fourier_fraction}.")
        spec.prepare(self)
        spec.validate(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptConfig:
        """Build from :meth:`to_dict` output; keys that are not fields (from other versions) are ignored."""
        if not isinstance(data, dict):
            raise PromptConfigError(f"a prompt config must be a JSON object, got {type(data).__name__}.")
        known = {k: v for k, v in data.items() if k in _field_names()}
        return cls(**known)


def _check_int(name: str, value: Any, low: int, none_hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = f" (convert it with int({value!r}))" if isinstance(value, str) and value.strip().isdigit() else ""
        raise PromptConfigError(
            f"{name} must be an integer >= {low}{none_hint}, got {type(value).__name__} {value!r}{hint}."
        )
    if value < low:
        raise PromptConfigError(f"{name} must be >= {low}, got {value}.")
    return int(value)


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PromptConfigError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    if math.isnan(value) or math.isinf(value):
        raise PromptConfigError(f"{name} must be a finite number, got {value}.")
    return float(value)
