"""``vp``: visual prompting, a learnable padding frame added to the input image (no token prompts)."""

from __future__ import annotations

from typing import ClassVar

from .base import PromptMethod, register_method


@register_method
class VisualPrompt(PromptMethod):
    """Input-space prompt only (``input_prompt`` ``"pad"`` by default, or ``"conv"``); blocks as in ``none``."""

    name: ClassVar[str] = "vp"
    display_name: ClassVar[str] = "VP"
    default_input_prompt: ClassVar[str | None] = "pad"
    description: ClassVar[str] = "visual prompting: a learnable padding frame on the input image"
