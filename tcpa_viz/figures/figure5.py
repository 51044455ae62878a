"""Paper Fig. 5: 2D t-SNE of the final pre-logits features of the test split, baseline vs TCPA.

The features are what each model's classification head sees (``PromptedViT.forward_features``, the CLS
token after the final norm for CLS-pooled backbones), for at most ``max_samples`` test images (a seeded
random subset above that). Points are coloured by class; each panel reports the silhouette score and the
leave-one-out k-NN accuracy in the feature space and the trustworthiness of the embedding
(:func:`tcpa_viz.tsne.embedding_metrics`). The numbers are also written to ``tsne_metrics.json``.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from tcpa_core.data import dataset_size

from ..colors import categorical_colors
from ..features import extract_features
from ..tables import jsonable
from ..tsne import TSNEResult, plot_tsne_matplotlib, run_tsne
from .common import (
    DEFAULT_DEMO_DIR,
    FIGURES_SUBDIR,
    DataSpec,
    LoadedModel,
    ModelInputs,
    ModelRef,
    class_names,
    load_pair,
    resolve_data,
    sample_indices,
    write_figures,
)

DEFAULT_MAX_SAMPLES = 600
TSNEMemo = MutableMapping[tuple[Any, ...], TSNEResult]
"""Cache of t-SNE results keyed by checkpoint, data key, sample count and t-SNE settings, shared between figures."""


def model_tsne(loaded: LoadedModel, dataset: Dataset, indices: Sequence[int], perplexity: float = 30.0,
               max_iter: int = 1000, seed: int = 0, batch_size: int = 64) -> TSNEResult:
    """Pre-logits features ``[N, D]`` of the samples ``indices`` and their t-SNE with metrics."""
    inputs = ModelInputs(dataset, loaded.model, indices)
    feats = extract_features(loaded.model.forward_features, inputs, batch_size=batch_size, progress=False)
    return run_tsne(feats.features, feats.labels, perplexity=perplexity, random_state=seed, max_iter=max_iter)


def cached_tsne(memo: TSNEMemo | None, key: str | None, loaded: LoadedModel, dataset: Dataset,
                indices: Sequence[int], perplexity: float = 30.0, max_iter: int = 1000, seed: int = 0) -> TSNEResult:
    """:func:`model_tsne`, reusing ``memo`` when ``key`` identifies the data (``None``: never reused)."""
    full_key = (str(loaded.path), key, len(indices), float(perplexity), int(max_iter), int(seed))
    if memo is not None and key and full_key in memo:
        return memo[full_key]
    result = model_tsne(loaded, dataset, indices, perplexity=perplexity, max_iter=max_iter, seed=seed)
    if memo is not None and key:
        memo[full_key] = result
    return result


def data_key(data: DataSpec | Dataset | None, reference: LoadedModel) -> str | None:
    """A memo key for ``data`` (``None`` for dataset objects, which cannot be compared)."""
    if data is None:
        data = DataSpec.from_meta(reference.meta)
    if not isinstance(data, DataSpec):
        return None
    return json.dumps(jsonable(asdict(data.completed(reference.meta))), sort_keys=True)


def tsne_grid_matplotlib(cells: Sequence[Sequence[tuple[str, TSNEResult]]], row_titles: Sequence[str],
                         names: Sequence[str] | None, title: str) -> Figure:
    """Rows x columns of t-SNE scatters (``cells[r][c] = (panel title, result)``); legend in the last column."""
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    fig = Figure(figsize=(6.2 * n_cols + 1.0, 5.0 * n_rows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    for r, row in enumerate(cells):
        for c, (panel, result) in enumerate(row):
            ax = axes[r, c]
            plot_tsne_matplotlib(result, class_names=names, title=panel, ax=ax)
            legend = ax.get_legend()
            if legend is not None and c < n_cols - 1:
                legend.remove()
            if c == 0 and row_titles[r]:
                ax.set_ylabel(row_titles[r], fontsize="large")
    fig.suptitle(title, fontsize="medium")
    return fig


def _metrics_text(result: TSNEResult) -> str:
    m = result.metrics
    parts = []
    if m.get("silhouette_features") is not None:
        parts.append(f"silhouette {m['silhouette_features']:.3f}")
    if m.get("knn_accuracy_features") is not None:
        parts.append(f"{m.get('knn_k', 5)}-NN {m['knn_accuracy_features']:.3f}")
    if m.get("trustworthiness") is not None:
        parts.append(f"trust {m['trustworthiness']:.3f}")
    return ", ".join(parts)


def tsne_grid_plotly(cells: Sequence[Sequence[tuple[str, TSNEResult]]], row_titles: Sequence[str],
                     names: Sequence[str] | None, title: str) -> Any:
    """Interactive grid; one legend entry per class toggles that class in every panel."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    titles = [f"{(row_titles[r] + ': ') if row_titles[r] else ''}{panel}<br><sup>{_metrics_text(res)}</sup>"
              for r, row in enumerate(cells) for panel, res in row]
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=titles, horizontal_spacing=0.04,
                        vertical_spacing=0.12 / max(n_rows, 1))
    classes = np.unique(np.concatenate([np.asarray(res.labels) for row in cells for _, res in row]))
    colours = dict(zip(classes.tolist(), categorical_colors(len(classes)), strict=True))
    for r, row in enumerate(cells):
        for c, (_, res) in enumerate(row):
            labels = np.asarray(res.labels)
            for cls in classes.tolist():
                sel = np.flatnonzero(labels == cls)
                name = names[int(cls)] if names and 0 <= int(cls) < len(names) else str(cls)
                fig.add_trace(go.Scattergl(
                    x=res.embedding[sel, 0], y=res.embedding[sel, 1], mode="markers", name=name,
                    legendgroup=name, showlegend=r == 0 and c == 0, customdata=sel,
                    marker=dict(size=5, color=colours[cls]),
                    hovertemplate=f"sample %{{customdata}}<br>class {name}<extra></extra>",
                ), row=r + 1, col=c + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(title=dict(text=title.replace("\n", "<br>")), width=560 * n_cols + 160,
                      height=520 * n_rows + 160, legend=dict(title=dict(text="class")), margin=dict(t=150))
    return fig


def metrics_record(loaded: LoadedModel, result: TSNEResult) -> dict[str, Any]:
    """JSON record of one model's t-SNE: label, method, checkpoint, metrics, parameters, timings."""
    return {"label": loaded.label, "method": loaded.method, "checkpoint": str(loaded.path), **result.summary()}


def figure5(
    baseline: ModelRef | None = None,
    tcpa: ModelRef | None = None,
    out_dir: str | Path | None = None,
    data: DataSpec | Dataset | None = None,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    perplexity: float = 30.0,
    max_iter: int = 1000,
    seed: int = 0,
    demo_dir: str | Path = DEFAULT_DEMO_DIR,
    stem: str = "figure5",
    memo: TSNEMemo | None = None,
) -> list[Path]:
    """Write Fig. 5 (``<stem>.png``, ``<stem>.html``) and ``tsne_metrics.json``; returns the three paths.

    Args:
        baseline, tcpa: checkpoints (paths or loaded); default: those of ``demo_dir``.
        out_dir: output folder (default ``<demo_dir>/figures``).
        data: a :class:`DataSpec` or dataset (default: the test split of the baseline's training dataset).
        max_samples: at most this many samples (seeded random subset), ``None`` for all.
        perplexity, max_iter, seed: t-SNE settings (see :func:`tcpa_viz.tsne.run_tsne`).
        demo_dir: the demo folder for the defaults.
        stem: file name of the figure without extension.
        memo: t-SNE results shared with other figures (see :data:`TSNEMemo`).
    """
    base, tc = load_pair(baseline, tcpa, demo_dir)
    dataset = resolve_data(data, base)
    indices = sample_indices(dataset_size(dataset), max_samples, seed)
    key = data_key(data, base)
    results = [cached_tsne(memo, key, m, dataset, indices, perplexity=perplexity, max_iter=max_iter, seed=seed)
               for m in (base, tc)]
    names = class_names(dataset)
    spec = data if isinstance(data, DataSpec) else (DataSpec.from_meta(base.meta) if data is None else None)
    what = spec.title if spec is not None else type(dataset).__name__
    title = (f"Fig. 5: t-SNE of the pre-logits features, {what} ({len(indices)} images), coloured by class\n"
             "silhouette and k-NN accuracy in the feature space, trustworthiness of the embedding")
    cells = [[(m.label, r) for m, r in zip((base, tc), results, strict=True)]]
    out = Path(out_dir) if out_dir is not None else Path(demo_dir) / FIGURES_SUBDIR
    paths = write_figures(out, stem, tsne_grid_matplotlib(cells, [""], names, title),
                          tsne_grid_plotly(cells, [""], names, title))
    record = {
        "figure": "5", "data": jsonable(asdict(spec)) if spec is not None else what, "n_samples": len(indices),
        "models": {"baseline": metrics_record(base, results[0]), "tcpa": metrics_record(tc, results[1])},
    }
    metrics_path = out / "tsne_metrics.json"
    metrics_path.write_text(json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n")
    return [*paths, metrics_path]
