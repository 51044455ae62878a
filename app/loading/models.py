"""Loaded models shared by every browser session (``st.cache_resource``; never modified after loading, every
forward pass under the model's lock)."""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st
import torch

from app.loading.checkpoints import CheckpointInfo, checkpoint_info
from tcpa_viz.models import LoadedModel, load_run


@dataclass(kw_only=True)
class DashboardModel(LoadedModel):
    """The analysis :class:`~tcpa_viz.models.LoadedModel` with what the dashboard adds: its cache key, the
    picker's :class:`CheckpointInfo`, the parameter counts and the lock every forward pass takes."""

    key: str
    info: CheckpointInfo
    counts: dict[str, int]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_heads(self) -> int:
        return int(self.model.backbone.blocks[0].attn.num_heads)

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


@st.cache_resource(max_entries=6, show_spinner=False)
def load_model(weights: str, mtime: float) -> DashboardModel:
    """Rebuild and load the checkpoint (``mtime`` invalidates the cache when the file is rewritten)."""
    loaded = load_run(weights)
    loaded.model.eval()
    base = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(LoadedModel)}
    info = checkpoint_info(Path(weights), Path(weights).parent.name)
    return DashboardModel(**base, key=f"{weights}@{mtime}", info=info, counts=parameter_counts(loaded.model))
