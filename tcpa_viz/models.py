"""Checkpoints as the analysis code sees them: run-folder resolution, loading, comparability, display images.

``tcpa-viz train --out DIR`` writes ``DIR/best`` and ``DIR/last``; ``tcpa-viz demo`` writes one such run
folder per method plus ``summary.json``. Every command and figure that takes a checkpoint accepts a
checkpoint folder, its ``.safetensors``/``.json`` file, or a run folder (its ``best/``, else ``last/``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcpa_core.checkpoint import WEIGHTS_FILE, checkpoint_files, load_checkpoint
from tcpa_core.errors import CheckpointError, PromptConfigError
from tcpa_core.methods import get_method
from tcpa_core.model import PromptedViT
from tcpa_core.train import BEST_DIR, LAST_DIR

DEMO_SUMMARY = "summary.json"
"""File written by ``tcpa-viz demo`` beside its run folders (methods, accuracies, seconds per epoch)."""


def method_title(method: str) -> str:
    """Display name of a prompting method from the method registry (the name itself for an unregistered one)."""
    try:
        return get_method(method).display_name
    except PromptConfigError:
        return method


@dataclass
class LoadedModel:
    """A checkpoint loaded for analysis.

    Attributes:
        model: the ``PromptedViT`` (eval mode).
        path: the checkpoint that was loaded (folder or weights file).
        label: display name (the method's display name unless given).
        meta: the checkpoint's JSON description.
    """

    model: PromptedViT
    path: Path
    label: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.model.config.method)

    @property
    def is_tcpa_family(self) -> bool:
        """Whether the method's role in the method registry is ``"tcpa"`` (TCPA, R-TCPA, VFPT+TCPA, ...)."""
        return self.model.config.spec.role == "tcpa"

    @property
    def depth(self) -> int:
        return self.model.depth

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of the model's input size."""
        grid = self.model.backbone.patch_embed.grid_size
        return int(grid[0]), int(grid[1])

    @property
    def data_config(self) -> dict[str, Any]:
        """The model's data config (input size it was built for, with its real channel count; mean, std, ...)."""
        return self.model.data_config

    @property
    def fingerprint(self) -> str:
        """The backbone fingerprint recorded in the checkpoint (empty when it records none)."""
        return str((self.meta.get("backbone") or {}).get("fingerprint") or "")

    @property
    def backbone_name(self) -> str:
        return str((self.meta.get("backbone") or {}).get("name") or self.model.backbone_name)


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint for ``path``: a checkpoint folder or file itself, or the ``best/`` (else ``last/``) of a
    ``tcpa-viz train --out`` run folder."""
    p = Path(path).expanduser()
    if p.is_dir() and not (p / WEIGHTS_FILE).is_file():
        for sub in (BEST_DIR, LAST_DIR):
            if (p / sub / WEIGHTS_FILE).is_file():
                return p / sub
    if not p.exists():
        raise CheckpointError(
            f"No checkpoint at {p}: the path does not exist. Pass a checkpoint folder, its .safetensors file, or "
            "the --out folder of `tcpa-viz train` (its best/ is used); run `tcpa-viz demo` for the demo ones."
        )
    if not checkpoint_files(p)[0].is_file():
        raise CheckpointError(
            f"{p} holds no checkpoint ({WEIGHTS_FILE}, {BEST_DIR}/ or {LAST_DIR}/); pass a checkpoint folder or "
            "the --out folder of `tcpa-viz train`."
        )
    return p


def load_run(path: str | Path | LoadedModel, label: str | None = None, backbone: str | None = None,
             backbone_weights: str | Path | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load the checkpoint of ``path`` (see :func:`resolve_checkpoint`); a :class:`LoadedModel` is returned as is.

    ``backbone``/``backbone_weights`` override the backbone recorded in the checkpoint (see
    :func:`tcpa_core.checkpoint.load_checkpoint`).
    """
    if isinstance(path, LoadedModel):
        return path
    where = resolve_checkpoint(path)
    model = load_checkpoint(where, backbone=backbone, checkpoint=backbone_weights, device=device)
    return LoadedModel(model, where, label or model.config.display_name, dict(model.checkpoint_meta))


def display_image(image: torch.Tensor, data_config: dict[str, Any]) -> np.ndarray:
    """Undo the normalisation of one model input ``[C, H, W]`` -> ``uint8 [H, W, 3]`` (what the model saw;
    a one-channel input is repeated to RGB)."""
    mean = torch.as_tensor(data_config["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(data_config["std"], dtype=torch.float32).view(-1, 1, 1)
    rgb = (image.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
    if rgb.shape[0] == 1:
        rgb = rgb.expand(3, -1, -1)
    return (rgb.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def read_demo_summary(demo_dir: str | Path) -> dict[str, Any] | None:
    """``summary.json`` of a ``tcpa-viz demo`` folder, or ``None`` when it is missing or not valid JSON."""
    path = Path(demo_dir) / DEMO_SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None
