"""Checkpoint discovery: the folder to list, the checkpoints found there or given by path, the defaults of the
pickers and the test accuracy the demo summary records. Only JSON headers are read here (``st.cache_data``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from tcpa_core import CheckpointError, PromptConfig, TCPAError
from tcpa_core.checkpoint import META_FILE, checkpoint_files, read_checkpoint_meta
from tcpa_core.methods import get_method, list_methods
from tcpa_viz.models import resolve_checkpoint

DEMO_DIR_ENV = "TCPA_VIZ_DEMO_DIR"
"""Environment variable naming the folder whose checkpoints are listed (default ``demo_out``)."""
CHECKPOINTS_ENV = "TCPA_VIZ_CHECKPOINTS"
"""Environment variable with extra checkpoint paths, separated by ``os.pathsep``."""
DEFAULT_DEMO_DIR = "demo_out"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint found on disk (only its JSON header has been read)."""

    label: str
    weights: str
    method: str
    backbone: str
    fingerprint: str
    mtime: float
    tcpa_family: bool = False
    """True for the TCPA family (registry role ``"tcpa"``: TCPA, R-TCPA, VFPT+TCPA ...), the TCPA picker's list."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def title(self) -> str:
        """``label (method, backbone)`` for selectors."""
        return f"{self.label} ({self.method}, {self.backbone})"


def resolve_demo_dir(given: str | None) -> Path:
    """The checkpoint folder to list: ``given``, else ``$TCPA_VIZ_DEMO_DIR``, else ``demo_out`` (looked up in
    the working directory first, then next to the ``app`` folder)."""
    text = given or os.environ.get(DEMO_DIR_ENV) or DEFAULT_DEMO_DIR
    path = Path(text).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    return path.resolve()


def extra_checkpoint_paths(given: Sequence[str] = ()) -> list[str]:
    """Checkpoint paths from the command line followed by those of ``$TCPA_VIZ_CHECKPOINTS``."""
    env = [p for p in os.environ.get(CHECKPOINTS_ENV, "").split(os.pathsep) if p.strip()]
    return list(dict.fromkeys([*given, *env]))


def _tcpa_family(prompt_config: dict[str, Any]) -> bool:
    """Whether the recorded prompt config is of the TCPA family (method registry role ``"tcpa"``)."""
    try:
        return PromptConfig.from_dict(prompt_config).spec.role == "tcpa"
    except (TCPAError, TypeError, ValueError):
        return False


def checkpoint_info(weights: Path, label: str) -> CheckpointInfo:
    """The header of the checkpoint whose weights file is ``weights``, listed as ``label``."""
    meta = read_checkpoint_meta(weights)
    backbone = meta.get("backbone") or {}
    return CheckpointInfo(
        label=label,
        weights=str(weights.resolve()),
        method=str((meta.get("prompt_config") or {}).get("method", "?")),
        backbone=str(backbone.get("name", "?")),
        fingerprint=str(backbone.get("fingerprint", "")),
        mtime=weights.stat().st_mtime,
        tcpa_family=_tcpa_family(meta.get("prompt_config") or {}),
        meta=meta,
    )


@st.cache_data(ttl=15, show_spinner=False)
def discover_checkpoints(root: str) -> tuple[list[CheckpointInfo], list[str]]:
    """Checkpoints under ``root`` (every JSON with its weights file beside it) and the problems met.

    Labels are paths relative to ``root`` (``tcpa/best``); ``best`` checkpoints come first.
    """
    base = Path(root)
    if not base.is_dir():
        return [], []
    found: dict[str, CheckpointInfo] = {}
    problems: list[str] = []
    for meta_path in sorted(base.rglob("*.json")):
        weights = checkpoint_files(meta_path)[0]
        if not weights.is_file() or str(weights.resolve()) in found:
            continue
        rel = (meta_path.parent if meta_path.name == META_FILE else meta_path.with_suffix("")).relative_to(base)
        try:
            info = checkpoint_info(weights, rel.as_posix() or base.name)
        except CheckpointError as exc:
            problems.append(f"{rel}: {exc}")
            continue
        found[info.weights] = info
    infos = sorted(found.values(), key=lambda i: (not i.label.endswith("best"), i.label))
    return infos, problems


@st.cache_data(ttl=15, show_spinner=False)
def describe_checkpoint(path: str) -> CheckpointInfo:
    """Read the header of a checkpoint given by the user (raises CheckpointError with a readable message)."""
    if not str(path).strip():
        raise CheckpointError("Enter the path of a checkpoint folder or .safetensors file.")
    given = Path(path.strip()).expanduser()
    return checkpoint_info(checkpoint_files(resolve_checkpoint(given))[0], str(given))


def _registry_position(method: str, role: str) -> int:
    """Position of ``method`` among the registered methods of ``role`` (``tcpa_core.methods.list_methods``);
    methods of another role or not registered come after all of them."""
    names = list_methods(role=role)
    try:
        resolved = get_method(method).name
    except TCPAError:
        return len(names)
    return names.index(resolved) if resolved in names else len(names)


def default_choice(infos: Sequence[CheckpointInfo], tcpa: bool) -> int | None:
    """Index of the default TCPA (``tcpa=True``) or baseline checkpoint among ``infos`` (``None`` when there is
    none of that kind): ``best`` checkpoints before others, then the method's position in the method registry
    (``list_methods(role=...)``, registration order), then the listing order. The demo folder's pair thus gives
    VPT-deep as the baseline and TCPA as the TCPA model."""
    role = "tcpa" if tcpa else "baseline"
    ranked = [(not info.label.endswith("best"), _registry_position(info.method, role), i)
              for i, info in enumerate(infos) if info.tcpa_family == tcpa]
    return min(ranked)[2] if ranked else None


def summary_test_accuracy(info: CheckpointInfo, summary: dict[str, Any]) -> float | None:
    """Test accuracy recorded for this checkpoint in the demo summary (matched on ``<method>/<best>``)."""
    tail = Path(info.weights).parent.parts[-2:]
    for entry in (summary.get("methods") or {}).values():
        ckpt = entry.get("checkpoint")
        if ckpt and Path(ckpt).parts[-2:] == tail and entry.get("test_acc") is not None:
            return float(entry["test_acc"])
    return None
