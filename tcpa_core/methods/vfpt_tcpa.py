"""``vfpt+tcpa``: TCPA whose block prompt sequence goes through VFPT's 2D FFT (the authors' released variant).

``PromptConfig(method="vfpt+tcpa")`` is ``PromptConfig(method="tcpa", fourier=True)``: same modules, same
logits; the config's ``fourier`` field is set to True when it is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .base import register_method
from .tcpa import TCPA

if TYPE_CHECKING:
    from ..config import PromptConfig


@register_method
class VFPTTCPA(TCPA):
    """Real part of the FFT over (sequence, hidden) of the whole concatenated prompt sequence of each block."""

    name: ClassVar[str] = "vfpt+tcpa"
    display_name: ClassVar[str] = "VFPT+TCPA"
    description: ClassVar[str] = "TCPA with the prompt sequence in Fourier space (VFPT), as in the authors' code"

    def prepare(self, config: PromptConfig) -> None:
        config.fourier = True
