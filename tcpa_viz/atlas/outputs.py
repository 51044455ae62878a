"""Files written by ``tcpa-viz atlas`` / ``tcpa-viz ablate`` / ``tcpa-viz demo`` (DESIGN.md section 8).

``tcpa-viz atlas --out DIR`` writes:

- ``usage.csv``: one row per (layer, pool, entry), columns of :meth:`PromptAtlas.usage_rows`
  (``layer,pool,entry,selected,top1,rank_weighted,tokens,selected_share,top1_share,object_selected,...``);
- ``atlas.json``: ``{"meta": {...}, "collapse": [one line per block and pool], "blocks": [...]}``; each block
  entry holds :meth:`PromptAtlas.block_stats` plus the arrays ``selected/top1/rank_weighted [N]``,
  ``rank_counts [K][N]``, ``class_selected/class_top1 [C][N]``, ``class_tokens [C]``, ``coselect [N][N]``,
  ``position_selected/position_top1 [N][h*w]`` (image pool; row-major patch grid, None for CLS),
  ``object``/``background`` (``selected``, ``top1`` [N], ``tokens``; None without boxes) and ``gallery``
  (per entry a list of ``{image, patch, row, col, similarity, rank}``, best first);
- ``gallery.npz``: ``L{layer}_{pool}`` -> uint8 ``[N, G, 48, 48, 3]`` crops of those gallery slots (same
  order as ``atlas.json``; the model-input picture, patch with one patch of context, whole image for CLS);
- figures (PNG, plus HTML where interactive): ``atlas_usage``, ``atlas_usage_by_class``,
  ``atlas_object_background`` (with boxes), ``atlas_diagnostics``, ``atlas_spatial_L{l}``,
  ``atlas_gallery_L{l}_{pool}`` (PNG).

``tcpa-viz ablate --out DIR`` writes ``ablation.csv`` (columns :data:`ABLATION_COLUMNS`) and ``importance``
(PNG + HTML).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from tcpa_core.model import PromptedViT

from ..saving import save_figure
from ..tables import jsonable, write_rows_csv
from . import figures as F
from .gallery import gallery_crops
from .importance import ABLATION_COLUMNS, ImportanceResult, prompt_importance
from .stats import PromptAtlas, prompt_atlas

USAGE_FILE, ATLAS_FILE, GALLERY_FILE, ABLATION_FILE = "usage.csv", "atlas.json", "gallery.npz", "ablation.csv"


def _save(pair: Any, out: Path, stem: str, formats: Iterable[str]) -> list[Path]:
    paths = []
    mpl, ply = pair if isinstance(pair, tuple) else (pair, None)
    for ext in formats:
        if ext == "html":
            if ply is not None:
                paths.append(save_figure(ply, out / f"{stem}.html"))
        else:
            paths.append(save_figure(mpl, out / f"{stem}.{ext}"))
    return paths


def image_reader(model: PromptedViT, dataset: Dataset) -> Callable[[int], np.ndarray]:
    """``index -> uint8 [H, W, 3]``: the model-input picture of a sample (normalisation undone)."""
    from ..models import display_image

    config = model.data_config
    return lambda index: display_image(dataset[index][0], config)


def write_atlas(atlas: PromptAtlas, out_dir: str | Path, model: PromptedViT, dataset: Dataset,
                figure_layers: Iterable[int] | None = None, formats: Iterable[str] = ("png", "html")) -> list[Path]:
    """Write ``usage.csv``, ``atlas.json``, ``gallery.npz`` and the figures into ``out_dir``; spatial maps and
    galleries for ``figure_layers`` (default: every analysed block). Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    formats = tuple(formats)
    paths = [write_rows_csv(atlas.usage_rows(), out / USAGE_FILE)]
    (out / ATLAS_FILE).write_text(json.dumps(jsonable(atlas.to_json()), allow_nan=False), encoding="utf-8")
    paths.append(out / ATLAS_FILE)
    layers = atlas.layers if figure_layers is None else sorted({x % atlas.meta["depth"] for x in figure_layers})
    crops: dict[str, np.ndarray] = {}
    reader = image_reader(model, dataset)
    for (layer, pool), buffer in sorted(atlas.galleries.items()):
        crops[f"L{layer}_{pool}"] = gallery_crops(buffer, reader, atlas.grid)
    if crops:
        np.savez_compressed(out / GALLERY_FILE, **crops)  # type: ignore[arg-type]
        paths.append(out / GALLERY_FILE)
    paths += _save(F.usage_heatmap(atlas), out, "atlas_usage", formats)
    paths += _save(F.usage_by_class(atlas), out, "atlas_usage_by_class", formats)
    pair = F.object_background(atlas)
    if pair is not None:
        paths += _save(pair, out, "atlas_object_background", formats)
    paths += _save(F.diagnostics_figure(atlas), out, "atlas_diagnostics", formats)
    for layer in layers:
        if layer not in atlas.layers:
            continue
        paths += _save(F.spatial_maps(atlas, layer), out, f"atlas_spatial_L{layer}", formats)
        for pool in ("cls", "image"):
            key = f"L{layer}_{pool}"
            if key in crops:
                fig = F.gallery_figure(crops[key], atlas.gallery_records(layer, pool), layer, pool)
                paths += _save(fig, out, f"atlas_gallery_{key}", [f for f in formats if f != "html"])
    return paths


def write_ablation(result: ImportanceResult, out_dir: str | Path, formats: Iterable[str] = ("png", "html")
                   ) -> list[Path]:
    """Write ``ablation.csv`` and the importance ranking figure."""
    out = Path(out_dir)
    paths = [write_rows_csv(result.rows, out / ABLATION_FILE, fieldnames=ABLATION_COLUMNS)]
    return paths + _save(F.importance_figure(result), out, "importance", tuple(formats))


def run_demo_atlas(model: PromptedViT, test_data: Dataset, out_dir: str | Path,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The demo's atlas step: the atlas of every block on ``test_data`` (figures of the last block), the three
    selection rules and the single-entry ablations of the last block, written into ``out_dir``.
    Returns a JSON-ready summary (collapse lines, accuracy under each rule, most important entries)."""
    say = log or (lambda _line: None)
    atlas = prompt_atlas(model, test_data, progress=False)
    write_atlas(atlas, out_dir, model, test_data, figure_layers=[-1])
    result = prompt_importance(model, test_data, layers=[-1], progress=False)
    write_ablation(result, out_dir)
    summary = summarize(atlas, result)
    for line in summary["collapse"]:
        say(line)
    say(f"accuracy: top-k {100 * result.base_accuracy:.2f}%, " + ", ".join(
        f"{r['mode']} {100 * r['accuracy']:.2f}%" for r in result.rules()))
    return summary


def summarize(atlas: PromptAtlas, result: ImportanceResult | None = None, top: int = 3) -> dict[str, Any]:
    """Short JSON-ready summary: collapse lines, collapsed (block, pool) pairs, rule accuracies, top entries."""
    out: dict[str, Any] = {"collapse": atlas.collapse_messages(),
                           "collapsed": [[d["layer"], d["pool"]] for d in atlas.diagnostics()
                                         if d["collapse"]["collapsed"]]}
    if result is not None:
        out["base_accuracy"] = result.base_accuracy
        out["rules"] = {r["mode"]: r["accuracy"] for r in result.rules()}
        out["top_entries"] = {m: [{k: r[k] for k in ("layer", "pool", "entry", "delta_accuracy",
                                                      "delta_true_logit")} for r in result.ranking(m, top)]
                              for m in ("mask", "remove") if result.entries(m)}
    return out


__all__ = ["ABLATION_FILE", "ATLAS_FILE", "GALLERY_FILE", "USAGE_FILE", "run_demo_atlas", "summarize",
           "write_ablation", "write_atlas"]
