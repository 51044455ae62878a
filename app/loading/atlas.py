"""The prompt atlas files of the dashboard's atlas view (``st.cache_data``).

``tcpa-viz atlas --out DIR`` writes ``atlas.json`` and ``gallery.npz`` and ``tcpa-viz ablate --out DIR`` writes
``ablation.csv`` (schema: :mod:`tcpa_viz.atlas.outputs`); ``tcpa-viz demo`` writes them into ``demo_out/atlas``.
The view looks for them in ``<demo dir>/atlas``, then in the TCPA checkpoint's run folder (``<run>/atlas`` and
``<run>`` itself, where ``<run>`` is the folder above ``best/`` or ``last/``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from tcpa_core.errors import OutputPathError

ATLAS_FOLDER = "atlas"
ATLAS_FILE, GALLERY_FILE, ABLATION_FILE = "atlas.json", "gallery.npz", "ablation.csv"
CHECKPOINT_SUBFOLDERS = ("best", "last")


@dataclass
class AtlasData:
    """One atlas folder read back: ``meta``, the ``collapse`` lines, the per-(block, pool) documents of
    ``atlas.json`` keyed by ``(layer, pool)``, the gallery crops (``L{layer}_{pool}`` -> uint8
    ``[N, G, 48, 48, 3]``, empty without ``gallery.npz``) and the ablation table (``None`` without
    ``ablation.csv``)."""

    folder: Path
    meta: dict[str, Any]
    collapse: list[str]
    blocks: dict[tuple[int, str], dict[str, Any]]
    galleries: dict[str, np.ndarray]
    ablation: pd.DataFrame | None

    @property
    def layers(self) -> list[int]:
        """Analysed blocks, in order."""
        return sorted({layer for layer, _ in self.blocks})

    def pools(self, layer: int) -> list[str]:
        """Pools of ``layer`` present in the atlas (``cls`` before ``image``)."""
        return [p for p in ("cls", "image") if (layer, p) in self.blocks]

    def entry_ablation(self, layer: int, pool: str, entry: int) -> pd.DataFrame | None:
        """The ``ablation.csv`` rows of one entry (``None`` without the file; empty when that block was not
        ablated)."""
        if self.ablation is None:
            return None
        table = self.ablation
        rows = table[(table["layer"].astype(str) == str(layer)) & (table["pool"] == pool)
                     & (table["entry"].astype(str) == str(entry))]
        return rows.reset_index(drop=True)

    def rules(self) -> pd.DataFrame | None:
        """The selection-rule rows of ``ablation.csv`` (``layer == "all"``), or ``None``."""
        if self.ablation is None:
            return None
        rows = self.ablation[self.ablation["layer"].astype(str) == "all"]
        return rows.reset_index(drop=True) if len(rows) else None


def run_folder(weights: str | Path) -> Path:
    """The run folder of a checkpoint's weights file: the folder above ``best/``/``last/``, else its folder."""
    folder = Path(weights).parent
    return folder.parent if folder.name in CHECKPOINT_SUBFOLDERS else folder


def atlas_candidates(demo_dir: Path | None, weights: str | None) -> list[Path]:
    """Folders searched for ``atlas.json``, in order."""
    out = []
    if demo_dir is not None:
        out.append(Path(demo_dir) / ATLAS_FOLDER)
    if weights:
        run = run_folder(weights)
        out += [run / ATLAS_FOLDER, run]
    return out


def find_atlas_dir(demo_dir: Path | None, weights: str | None) -> Path | None:
    """The first candidate folder holding ``atlas.json``, or ``None``."""
    return next((p for p in atlas_candidates(demo_dir, weights) if (p / ATLAS_FILE).is_file()), None)


def folder_stamp(folder: Path) -> tuple[float, ...]:
    """Modification times of the three files (0 when absent): the cache key that notices a rewrite."""
    return tuple((folder / name).stat().st_mtime if (folder / name).is_file() else 0.0
                 for name in (ATLAS_FILE, GALLERY_FILE, ABLATION_FILE))


@st.cache_data(max_entries=4, show_spinner=False)
def load_atlas(folder: str, stamp: tuple[float, ...]) -> AtlasData:
    """Read an atlas folder (``stamp`` = :func:`folder_stamp`, part of the cache key only).

    Raises :class:`~tcpa_core.errors.OutputPathError` naming the file when one cannot be read."""
    path = Path(folder)
    try:
        document = json.loads((path / ATLAS_FILE).read_text(encoding="utf-8"))
        blocks = {(int(b["layer"]), str(b["pool"])): b for b in document["blocks"]}
        meta, collapse = dict(document.get("meta", {})), [str(x) for x in document.get("collapse", [])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputPathError(f"cannot read {path / ATLAS_FILE} ({type(exc).__name__}: {exc}); rewrite it with "
                              "`tcpa-viz atlas --model ... --out ...`.") from None
    galleries: dict[str, np.ndarray] = {}
    if (path / GALLERY_FILE).is_file():
        try:
            with np.load(path / GALLERY_FILE, allow_pickle=False) as data:
                galleries = {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError) as exc:
            raise OutputPathError(f"cannot read {path / GALLERY_FILE} ({exc}); rewrite it with "
                                  "`tcpa-viz atlas`.") from None
    ablation = None
    if (path / ABLATION_FILE).is_file():
        try:
            ablation = pd.read_csv(path / ABLATION_FILE, dtype={"layer": str, "pool": str, "entry": str})
        except (OSError, ValueError) as exc:
            raise OutputPathError(f"cannot read {path / ABLATION_FILE} ({exc}); rewrite it with "
                                  "`tcpa-viz ablate`.") from None
        ablation["entry"] = ablation["entry"].fillna("")
    return AtlasData(folder=path, meta=meta, collapse=collapse, blocks=blocks, galleries=galleries,
                     ablation=ablation)
