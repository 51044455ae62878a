"""Checkpoint discovery: the folder to list, the checkpoints found there or given by path, the defaults of the
pickers and the demo summary. Only JSON headers are read here (``st.cache_data``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from tcpa_core import CheckpointError, PromptConfig, TCPAError
from tcpa_core.checkpoint import META_FILE, WEIGHTS_FILE, checkpoint_files, read_checkpoint_meta

DEMO_DIR_ENV = "TCPA_VIZ_DEMO_DIR"
"""Environment variable naming the folder whose checkpoints are listed (default ``demo_out``)."""
CHECKPOINTS_ENV = "TCPA_VIZ_CHECKPOINTS"
"""Environment variable with extra checkpoint paths, separated by ``os.pathsep``."""
DEFAULT_DEMO_DIR = "demo_out"
SUMMARY_FILE = "summary.json"
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


def _weights_for(path: Path) -> Path:
    """Weights file of a checkpoint given as a folder, a ``train --out`` folder, a .safetensors or a .json."""
    if path.is_dir() and not (path / WEIGHTS_FILE).is_file():
        for sub in ("best", "last"):
            if (path / sub / WEIGHTS_FILE).is_file():
                return path / sub / WEIGHTS_FILE
    return checkpoint_files(path)[0]


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
    given = Path(path.strip()).expanduser()
    if not str(path).strip():
        raise CheckpointError("Enter the path of a checkpoint folder or .safetensors file.")
    if not given.exists():
        raise CheckpointError(
            f"No checkpoint at {given}: the path does not exist. Give a checkpoint folder (with {WEIGHTS_FILE} "
            f"and {META_FILE}), the .safetensors file itself, or a `tcpa-viz train --out` folder."
        )
    return checkpoint_info(_weights_for(given), str(given))


def default_choice(infos: Sequence[CheckpointInfo], tcpa: bool) -> int | None:
    """Index of the default TCPA (``tcpa=True``) or baseline checkpoint: ``best`` ones first; for the
    baseline VPT-deep is preferred."""
    ranked = []
    for i, info in enumerate(infos):
        if info.tcpa_family != tcpa:
            continue
        ranked.append((not info.label.endswith("best"), info.method != "vpt-deep", i))
    return min(ranked)[2] if ranked else None


@st.cache_data(ttl=15, show_spinner=False)
def demo_summary(root: str) -> dict[str, Any]:
    """``summary.json`` of the demo folder (``{}`` when missing or unreadable)."""
    path = Path(root) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary_test_accuracy(info: CheckpointInfo, summary: dict[str, Any]) -> float | None:
    """Test accuracy recorded for this checkpoint in the demo summary (matched on ``<method>/<best>``)."""
    tail = Path(info.weights).parent.parts[-2:]
    for entry in (summary.get("methods") or {}).values():
        ckpt = entry.get("checkpoint")
        if ckpt and Path(ckpt).parts[-2:] == tail and entry.get("test_acc") is not None:
            return float(entry["test_acc"])
    return None
