"""PromptConfig: which prompting method to apply to the frozen backbone, and its sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from .errors import PromptConfigError

Method = Literal["none", "vpt-shallow", "vpt-deep", "vfpt", "vp", "tcpa", "r-tcpa"]
METHODS: tuple[str, ...] = ("none", "vpt-shallow", "vpt-deep", "vfpt", "vp", "tcpa", "r-tcpa")
INPUT_PROMPTS: tuple[str | None, ...] = (None, "pad", "conv")


@dataclass
class PromptConfig:
    """Configuration of the prompts added to a frozen timm VisionTransformer.

    Methods:
        ``none``        linear probe: no prompts, only the head is trained.
        ``vpt-shallow`` ``num_prompts`` prompts inserted after the embedding, carried through all blocks.
        ``vpt-deep``    ``num_prompts`` fresh prompts per block, outputs discarded after each block.
        ``vfpt``        VPT-deep where a ``fourier_fraction`` of each block's prompts goes through
                        a 2D FFT (real part) over (sequence, hidden).
        ``vp``          only an input-space prompt (``input_prompt``, "pad" by default).
        ``tcpa``        Token Coordinated Prompt Attention: per-block CLS and image prompt pools,
                        each token attends only to the prompts it selects (top-k cosine to keys).
        ``r-tcpa``      TCPA without token matching: CLS sees all CLS prompts, patches all image prompts.

    ``fourier=True`` with ``tcpa``/``r-tcpa`` gives VFPT+TCPA (FFT over the whole concatenated prompt
    sequence); ``input_prompt="pad"`` with ``tcpa`` gives VP+TCPA.
    Defaults of the pool sizes follow the authors' scripts (18/18, top-10/10, length 1).
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

    def __post_init__(self) -> None:
        self.validate()

    @property
    def uses_pools(self) -> bool:
        return self.method in ("tcpa", "r-tcpa")

    @property
    def uses_token_matching(self) -> bool:
        return self.method == "tcpa"

    @property
    def resolved_input_prompt(self) -> str | None:
        if self.method == "vp" and self.input_prompt is None:
            return "pad"
        return self.input_prompt

    def validate(self) -> None:
        if self.method not in METHODS:
            raise PromptConfigError(f"Unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.input_prompt not in INPUT_PROMPTS:
            raise PromptConfigError(
                f"Unknown input_prompt {self.input_prompt!r}; choose None, 'pad' or 'conv'."
            )
        if self.prompt_length < 1:
            raise PromptConfigError(f"prompt_length must be >= 1, got {self.prompt_length}.")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise PromptConfigError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}.")
        if self.method in ("vpt-shallow", "vpt-deep", "vfpt") and self.num_prompts < 1:
            raise PromptConfigError(f"method {self.method!r} needs num_prompts >= 1, got {self.num_prompts}.")
        if self.method == "vfpt" and not 0.0 <= self.fourier_fraction <= 1.0:
            raise PromptConfigError(f"fourier_fraction must be in [0, 1], got {self.fourier_fraction}.")
        if self.uses_pools:
            for name in ("cls_pool_size", "image_pool_size"):
                if getattr(self, name) < 1:
                    raise PromptConfigError(
                        f"{name} must be >= 1 for method {self.method!r}, got {getattr(self, name)}; "
                        "use method 'none' or 'vpt-deep' for a model without prompt pools."
                    )
            for topk, pool in (("cls_topk", "cls_pool_size"), ("image_topk", "image_pool_size")):
                k, n = getattr(self, topk), getattr(self, pool)
                if self.uses_token_matching and not 1 <= k <= n:
                    raise PromptConfigError(
                        f"{topk}={k} must be between 1 and {pool}={n}: a token cannot select more "
                        f"prompts than the pool holds. Lower {topk} or enlarge {pool}."
                    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
