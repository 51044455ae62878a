"""Loaded models shared by every browser session (``st.cache_resource``; never modified after loading, every
forward pass under the model's lock)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st
import torch

from app.loading.checkpoints import CheckpointInfo, checkpoint_info
from tcpa_core.checkpoint import load_checkpoint
from tcpa_core.data import data_config


@dataclass
class LoadedModel:
    """A loaded checkpoint with what the views need about it."""

    key: str
    info: CheckpointInfo
    model: torch.nn.Module
    data_config: dict[str, Any]
    counts: dict[str, int]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def method(self) -> str:
        """Display name of the prompting method (``"TCPA"``, ``"VPT-deep"`` ...) from the method registry."""
        return self.model.config.display_name

    @property
    def depth(self) -> int:
        return self.model.depth

    @property
    def num_heads(self) -> int:
        return int(self.model.backbone.blocks[0].attn.num_heads)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.model.backbone.patch_embed.grid_size)

    @property
    def has_selection(self) -> bool:
        """True for methods with token matching (the model records per-token prompt choices)."""
        return self.model.config.spec.token_matching

    @property
    def class_names(self) -> list[str]:
        names = self.info.meta.get("class_names")
        if names and len(names) == self.model.num_classes:
            return [str(n) for n in names]
        return [str(i) for i in range(self.model.num_classes)]

    @property
    def data_key(self) -> str:
        return json.dumps(self.data_config, sort_keys=True)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of a PromptedViT: total, frozen backbone, prompts (incl. input prompt), head, trainable."""
    def count(module: torch.nn.Module | None) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    return {
        "total": count(model),
        "backbone": count(model.backbone),
        "prompts": count(model.prompts) + count(model.input_prompt),
        "head": count(model.head),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def model_data_config(model: torch.nn.Module) -> dict[str, Any]:
    """The backbone's data config with the input size it was actually built for."""
    cfg = dict(model.data_config)
    cfg["input_size"] = (3, *tuple(model.backbone.patch_embed.img_size))
    out = data_config(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


@st.cache_resource(max_entries=6, show_spinner=False)
def load_model(weights: str, mtime: float) -> LoadedModel:
    """Rebuild and load the checkpoint (``mtime`` invalidates the cache when the file is rewritten)."""
    info = checkpoint_info(Path(weights), Path(weights).parent.name)
    model = load_checkpoint(weights).eval()
    return LoadedModel(key=f"{weights}@{mtime}", info=info, model=model, data_config=model_data_config(model),
                       counts=parameter_counts(model))


def backbone_mismatch(a: LoadedModel, b: LoadedModel) -> str | None:
    """Why two models cannot be compared on the same images (``None`` when they can)."""
    if a.info.fingerprint and b.info.fingerprint and a.info.fingerprint != b.info.fingerprint:
        return (f"the baseline {b.info.label} was trained on backbone {b.info.backbone!r} (fingerprint "
                f"{b.info.fingerprint[:12]}) but {a.info.label} on {a.info.backbone!r} (fingerprint "
                f"{a.info.fingerprint[:12]})")
    if a.data_config != b.data_config:
        return (f"the two models take different inputs ({a.data_config['input_size']} vs "
                f"{b.data_config['input_size']})")
    return None
