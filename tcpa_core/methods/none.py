"""``none``: linear probe. No prompts; only the new head is trained."""

from __future__ import annotations

from typing import ClassVar

from .base import PromptMethod, register_method


@register_method
class NoPrompt(PromptMethod):
    """The frozen backbone as it is; blocks run through timm's own ``Block`` (explicit attention when captured)."""

    name: ClassVar[str] = "none"
    display_name: ClassVar[str] = "Linear probe"
    description: ClassVar[str] = "linear probe: no prompts, only the head is trained"
