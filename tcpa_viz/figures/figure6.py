"""Paper Fig. 6: t-SNE of the pre-logits features on several datasets (rows), baseline vs TCPA (columns).

Real use: one row per dataset, each with its own pair of checkpoints (:class:`TSNERow`). The demo has a
single downstream task, so its rows are the held-out test digits at three clutter levels (plain
background, the training clutter, extra scribbles painted over the digit; see
:mod:`tcpa_viz.figures.clutter`) embedded by the same two demo checkpoints. Metrics per panel as in Fig. 5,
written to ``<stem>_tsne_metrics.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from tcpa_core.data import dataset_size, limit_samples

from ..tables import jsonable
from .clutter import CLUTTER_LEVELS, LEVEL_TITLES, DigitsAtClutterLevel
from .common import (
    DEFAULT_DEMO_DIR,
    FIGURES_SUBDIR,
    DataSpec,
    FigureArgumentError,
    LoadedModel,
    class_names,
    load_pair,
    resolve_data,
    sample_indices,
    write_figures,
)
from .figure5 import (
    DEFAULT_MAX_SAMPLES,
    TSNEMemo,
    cached_tsne,
    data_key,
    metrics_record,
    tsne_grid_matplotlib,
    tsne_grid_plotly,
)

CLUTTER_SUBJECT = "the demo's test digits at three clutter levels (one downstream task, so rows are data conditions)"


@dataclass
class TSNERow:
    """One row of Fig. 6: a dataset (a :class:`DataSpec` or a dataset object) and its two checkpoints.

    ``baseline``/``tcpa`` default to the demo folder's checkpoints; ``key`` names the data for sharing
    t-SNE results between figures (derived from a :class:`DataSpec` automatically).
    """

    label: str
    data: DataSpec | Dataset
    baseline: str | Path | LoadedModel | None = None
    tcpa: str | Path | LoadedModel | None = None
    key: str | None = None


def clutter_rows(baseline: LoadedModel, tcpa: LoadedModel, split: str = "test") -> list[TSNERow]:
    """The demo rows: the digits ``split`` at the clutter levels ``plain``, ``clutter`` and ``heavy``.

    The ``clutter`` row is the checkpoint's own test split (as a :class:`DataSpec`, so Fig. 5's t-SNE is
    reused when computed in the same run).
    """
    spec = DataSpec.from_meta(baseline.meta, split)
    rows = []
    for level in CLUTTER_LEVELS:
        title = LEVEL_TITLES[level]
        if level == "clutter":
            rows.append(TSNERow(title, spec, baseline, tcpa))
        else:
            data = limit_samples(DigitsAtClutterLevel(level, split=split, seed=spec.seed), spec.max_samples,
                                 spec.seed)
            key = f"digits-{split}-{spec.seed}-{spec.max_samples}-{level}"
            rows.append(TSNERow(title, data, baseline, tcpa, key=key))
    return rows


def figure6(
    rows: Sequence[TSNERow] | None = None,
    out_dir: str | Path | None = None,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    perplexity: float = 30.0,
    max_iter: int = 1000,
    seed: int = 0,
    demo_dir: str | Path = DEFAULT_DEMO_DIR,
    stem: str = "figure6",
    memo: TSNEMemo | None = None,
    subject: str | None = None,
) -> list[Path]:
    """Write Fig. 6 (``<stem>.png``, ``<stem>.html``) and ``<stem>_tsne_metrics.json``; returns the paths.

    Args:
        rows: the datasets and their checkpoints; default: the demo's clutter levels (:func:`clutter_rows`)
            with the checkpoints of ``demo_dir``.
        out_dir: output folder (default ``<demo_dir>/figures``).
        max_samples, perplexity, max_iter, seed, memo: as for :func:`tcpa_viz.figures.figure5`.
        demo_dir: the demo folder for the defaults.
        stem: file name of the figure without extension.
        subject: what the rows are, for the title (default: the row labels; :data:`CLUTTER_SUBJECT` for the
            demo rows).
    """
    if rows is None:
        rows = clutter_rows(*load_pair(None, None, demo_dir))
        subject = subject or CLUTTER_SUBJECT
    subject = subject or ", ".join(r.label for r in rows)
    if not rows:
        raise FigureArgumentError("figure 6 needs at least one row: pass --dataset with --baseline/--tcpa, or "
                                  "none for the demo's rows.")
    cells, row_titles, records = [], [], []
    names = None
    for row in rows:
        base, tc = load_pair(row.baseline, row.tcpa, demo_dir)
        dataset = resolve_data(row.data, base)
        indices = sample_indices(dataset_size(dataset), max_samples, seed)
        key = row.key or (data_key(row.data, base) if isinstance(row.data, DataSpec) else None)
        results = [cached_tsne(memo, key, m, dataset, indices, perplexity=perplexity, max_iter=max_iter, seed=seed)
                   for m in (base, tc)]
        names = names or class_names(dataset)
        row_titles.append(f"{row.label} (N={len(indices)})")
        cells.append([(m.label, r) for m, r in zip((base, tc), results, strict=True)])
        records.append({
            "row": row.label, "n_samples": len(indices),
            "data": jsonable(asdict(row.data)) if isinstance(row.data, DataSpec) else type(row.data).__name__,
            "models": {"baseline": metrics_record(base, results[0]), "tcpa": metrics_record(tc, results[1])},
        })
    title = (f"Fig. 6: t-SNE of the pre-logits features; rows: {subject}\n"
             "silhouette and k-NN accuracy in the feature space, trustworthiness of the embedding")
    out = Path(out_dir) if out_dir is not None else Path(demo_dir) / FIGURES_SUBDIR
    paths = write_figures(out, stem, tsne_grid_matplotlib(cells, row_titles, names, title),
                          tsne_grid_plotly(cells, row_titles, names, title))
    metrics_path = out / f"{stem}_tsne_metrics.json"
    metrics_path.write_text(json.dumps(jsonable({"figure": "6", "rows": records}), indent=2, allow_nan=False) + "\n")
    return [*paths, metrics_path]


def rows_from_args(datasets: Sequence[str], roots: Sequence[str | None],
                   baselines: Sequence[str | Path | LoadedModel], tcpas: Sequence[str | Path | LoadedModel],
                   split: str = "test") -> list[TSNERow]:
    """Rows from parallel lists (the ``--dataset``/``--data-root``/``--baseline``/``--tcpa`` options of
    ``tcpa-viz figure 6``): ``roots`` is empty or one per dataset (``-`` for none); ``baselines``/``tcpas``
    are one per dataset, or one reused for every dataset, or empty for the demo's."""
    n = len(datasets)
    for name, values in (("--data-root", roots), ("--baseline", baselines), ("--tcpa", tcpas)):
        if len(values) not in (0, 1, n) or (name == "--data-root" and len(values) not in (0, n)):
            raise FigureArgumentError(f"give {name} once per --dataset ({n} datasets, {len(values)} values)")

    def pick(values: Sequence[Any], i: int) -> Any:
        return values[i] if len(values) == n else (values[0] if values else None)

    rows = []
    for i, name in enumerate(datasets):
        root = pick(roots, i)
        spec = DataSpec(name=name, root=None if root in (None, "-") else root, split=split)
        rows.append(TSNERow(f"{name} {split}", spec, pick(baselines, i), pick(tcpas, i)))
    return rows
