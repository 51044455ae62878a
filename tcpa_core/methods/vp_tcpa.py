"""``vp+tcpa``: TCPA plus VP's learnable padding frame on the input image.

``PromptConfig(method="vp+tcpa")`` is ``PromptConfig(method="tcpa", input_prompt="pad")`` (``input_prompt``
may also be ``"conv"``).
"""

from __future__ import annotations

from typing import ClassVar

from .base import register_method
from .tcpa import TCPA


@register_method
class VPTCPA(TCPA):
    """TCPA blocks; the input image gets the padding prompt first (``input_prompt`` ``"pad"`` by default)."""

    name: ClassVar[str] = "vp+tcpa"
    display_name: ClassVar[str] = "VP+TCPA"
    default_input_prompt: ClassVar[str | None] = "pad"
    description: ClassVar[str] = "TCPA plus a learnable padding frame on the input image (VP)"
