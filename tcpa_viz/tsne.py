"""2D t-SNE of features (paper Fig. 5/6) with cluster-quality numbers.

Pipeline: features ``[N, D]`` -> PCA to ``pca_dims`` (when ``D > pca_dims``, standard practice that also
makes large ``N`` affordable) -> scikit-learn Barnes-Hut ``TSNE`` (2D, PCA initialisation, fixed
``random_state``, ``perplexity`` capped at ``(N - 1) / 3`` for small ``N``). Threads follow the process's
thread policy (:func:`tcpa_core.threads.configure_threads`, which the ``tcpa-viz`` command applies) unless
``n_jobs`` is given.

Metrics (all JSON-serialisable; ``None`` when undefined, e.g. a single class):

``silhouette_features``
    silhouette score of the class labels in the **original feature space** (Euclidean).
``silhouette_embedding``
    silhouette score of the class labels in the **2D t-SNE embedding**.
``knn_accuracy_features``
    leave-one-out ``k``-NN accuracy (majority vote, ties to the nearest tied class) in the original
    feature space; ``knn_accuracy_embedding`` the same in the embedding; ``knn_chance`` the majority-class
    frequency for reference.
``trustworthiness``
    :func:`sklearn.manifold.trustworthiness` of the embedding w.r.t. the original features.

Silhouette and feature-space k-NN use at most ``metric_max_samples`` points and trustworthiness at most
``trust_max_samples`` (a fixed-seed random subsample, reported as ``*_n`` next to each value).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from .colors import categorical_colors
from .errors import AnalysisArgumentError
from .tables import jsonable
from .tokens import to_numpy

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.axes import Axes

MIN_SAMPLES = 5
LEGEND_MAX_CLASSES = 30


@dataclass
class TSNEResult:
    """Output of :func:`run_tsne`.

    Attributes:
        embedding: ``[N, 2]`` float32 t-SNE coordinates.
        labels: ``[N]`` labels as given (``None`` when none were given).
        metrics: cluster-quality numbers (see the module docstring), JSON-serialisable.
        params: the settings actually used (perplexity after capping, PCA dims, ...).
        timings: seconds spent in ``pca``, ``tsne`` and ``metrics``.
    """

    embedding: np.ndarray
    labels: np.ndarray | None
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """``{"metrics", "params", "timings"}`` as plain JSON types."""
        return jsonable({"metrics": self.metrics, "params": self.params, "timings": self.timings})

    def to_json(self, indent: int | None = 2) -> str:
        """The :meth:`summary` as a JSON string."""
        return json.dumps(self.summary(), indent=indent, allow_nan=False)


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out ``k``-NN accuracy (Euclidean, majority vote; ties go to the class met first)."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(features, dtype=np.float32)
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    y = y.reshape(-1)
    k = min(k, len(x) - 1)
    if k < 1:
        raise AnalysisArgumentError("k-NN accuracy needs at least two samples")
    idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(return_distance=False)
    neigh = y[idx]
    n_cls = int(y.max()) + 1
    votes = np.zeros((len(x), n_cls), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(x)), k), neigh.ravel()), 1)
    best = votes.max(axis=1, keepdims=True)
    tied = votes[np.arange(len(x))[:, None], neigh] == best
    pred = neigh[np.arange(len(x)), tied.argmax(axis=1)]
    return float((pred == y).mean())


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=limit, replace=False)) if n > limit else np.arange(n)


def embedding_metrics(
    features: np.ndarray,
    embedding: np.ndarray,
    labels: np.ndarray | None,
    knn_k: int = 5,
    trust_k: int = 5,
    metric_max_samples: int = 5000,
    trust_max_samples: int = 2000,
    random_state: int = 0,
) -> dict[str, Any]:
    """Cluster-quality numbers of ``features [N, D]`` and ``embedding [N, 2]`` (see the module docstring)."""
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import silhouette_score

    x = np.asarray(features, dtype=np.float32)
    e = np.asarray(embedding, dtype=np.float32)
    n = len(x)
    rng = np.random.default_rng(random_state)
    out: dict[str, Any] = {"n_samples": n}
    t_idx = _subsample(n, trust_max_samples, rng)
    tk = min(trust_k, max(1, (len(t_idx) - 1) // 2 - 1))
    out["trustworthiness"] = float(trustworthiness(x[t_idx], e[t_idx], n_neighbors=tk))
    out["trustworthiness_k"] = tk
    out["trustworthiness_n"] = int(len(t_idx))
    if labels is None:
        return out
    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    out["n_classes"] = int(len(classes))
    out["knn_chance"] = float(counts.max() / n)
    m_idx = _subsample(n, metric_max_samples, rng)
    xs, es, ys = x[m_idx], e[m_idx], y[m_idx]
    n_sub_classes = len(np.unique(ys))
    ok = 2 <= n_sub_classes <= len(ys) - 1
    out["silhouette_features"] = float(silhouette_score(xs, ys)) if ok else None
    out["silhouette_embedding"] = float(silhouette_score(es, ys)) if ok else None
    out["silhouette_n"] = int(len(m_idx))
    out["knn_k"] = int(min(knn_k, len(ys) - 1))
    out["knn_accuracy_features"] = knn_accuracy(xs, ys, knn_k)
    out["knn_n"] = int(len(m_idx))
    out["knn_accuracy_embedding"] = knn_accuracy(e, y, knn_k)
    return out


def run_tsne(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | Sequence[Any] | None = None,
    perplexity: float = 30.0,
    random_state: int = 0,
    pca_dims: int | None = 50,
    max_iter: int = 1000,
    n_jobs: int | None = None,
    compute_metrics: bool = True,
    knn_k: int = 5,
    trust_k: int = 5,
    metric_max_samples: int = 5000,
    trust_max_samples: int = 2000,
) -> TSNEResult:
    """t-SNE of ``features [N, D]`` (optionally labelled ``[N]``) to 2D, plus metrics.

    Args:
        features: ``[N, D]`` feature matrix (N >= 5).
        labels: ``[N]`` class labels for the metrics and colouring.
        perplexity: requested perplexity; capped at ``(N - 1) / 3`` (recorded in ``params``).
        random_state: seed of PCA, t-SNE and metric subsampling.
        pca_dims: reduce to this many dimensions with PCA first when ``D`` is larger (``None``: never).
        max_iter: t-SNE iterations (scikit-learn's default is 1000).
        n_jobs: threads for PCA (BLAS), the neighbour search and the gradient (OpenMP), applied with
            threadpoolctl for this call; ``None`` keeps the process's thread policy.
        compute_metrics: compute :func:`embedding_metrics` (timed separately in ``timings["metrics"]``).
        knn_k, trust_k, metric_max_samples, trust_max_samples: see :func:`embedding_metrics`.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(to_numpy(features), dtype=np.float32)
    if x.ndim != 2:
        raise AnalysisArgumentError(f"features must be [N, D], got shape {x.shape}")
    n, d = x.shape
    if n < MIN_SAMPLES:
        raise AnalysisArgumentError(f"t-SNE needs at least {MIN_SAMPLES} samples, got {n}")
    y = None if labels is None else np.asarray(to_numpy(labels) if not isinstance(labels, Sequence) else labels)
    if y is not None and len(y) != n:
        raise AnalysisArgumentError(f"{len(y)} labels for {n} feature rows")
    if not np.isfinite(x).all():
        raise AnalysisArgumentError("features contain NaN or infinite values")
    timings: dict[str, float] = {}
    perp = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    used_pca = pca_dims is not None and d > pca_dims
    with threadpool_limits(limits=n_jobs):
        t0 = time.perf_counter()
        reduced = x
        if pca_dims is not None and used_pca:
            reduced = PCA(n_components=min(int(pca_dims), n, d), random_state=random_state).fit_transform(x)
        timings["pca"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tsne = TSNE(
            n_components=2, perplexity=perp, init="pca", learning_rate="auto", max_iter=max_iter,
            random_state=random_state, n_jobs=n_jobs,
        )
        embedding = tsne.fit_transform(reduced).astype(np.float32)
        timings["tsne"] = time.perf_counter() - t0
    params: dict[str, Any] = {
        "n_samples": n, "n_features": d, "pca_dims": int(reduced.shape[1]) if used_pca else None,
        "perplexity": perp, "perplexity_requested": float(perplexity), "max_iter": max_iter,
        "random_state": random_state, "n_jobs": n_jobs, "kl_divergence": float(tsne.kl_divergence_),
    }
    metrics: dict[str, Any] = {}
    if compute_metrics:
        t0 = time.perf_counter()
        with threadpool_limits(limits=n_jobs):
            metrics = embedding_metrics(
                x, embedding, y, knn_k=knn_k, trust_k=trust_k, metric_max_samples=metric_max_samples,
                trust_max_samples=trust_max_samples, random_state=random_state,
            )
        timings["metrics"] = time.perf_counter() - t0
    return TSNEResult(embedding, y, jsonable(metrics), jsonable(params), timings)


def _classes(labels: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if labels is None:
        return np.array([0]), np.zeros(n, dtype=np.int64)
    classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return classes, inverse.reshape(-1)


def _class_name(cls: Any, class_names: Sequence[str] | Mapping[Any, str] | None) -> str:
    if class_names is None:
        return str(cls)
    if isinstance(class_names, Mapping):
        return str(class_names.get(cls, cls))
    try:
        return str(class_names[int(cls)])
    except (ValueError, IndexError, TypeError):
        return str(cls)


def _metrics_line(metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (("silhouette_features", "silhouette (features)"),
                       ("knn_accuracy_features", f"{metrics.get('knn_k', 5)}-NN acc"),
                       ("trustworthiness", "trustworthiness")):
        if metrics.get(key) is not None:
            parts.append(f"{label} {metrics[key]:.3f}")
    return " | ".join(parts)


def _unpack(result: TSNEResult | np.ndarray, labels: Any) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    if isinstance(result, TSNEResult):
        return result.embedding, result.labels if labels is None else np.asarray(labels), result.metrics
    return np.asarray(result), None if labels is None else np.asarray(labels), {}


def plot_tsne_matplotlib(
    result: TSNEResult | np.ndarray,
    labels: np.ndarray | Sequence[Any] | None = None,
    class_names: Sequence[str] | Mapping[Any, str] | None = None,
    title: str | None = None,
    point_size: float | None = None,
    show_metrics: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Scatter of the 2D embedding coloured by class with a legend (a colour bar above 30 classes).

    ``result``: a :class:`TSNEResult` or an ``[N, 2]`` array (then pass ``labels``). ``class_names``:
    list indexed by integer label, or mapping label -> name. The metrics line goes under the title.
    """
    emb, y, metrics = _unpack(result, labels)
    classes, idx = _classes(y, len(emb))
    colours = categorical_colors(len(classes))
    if ax is None:
        fig = Figure(figsize=(6.8 if len(classes) <= LEGEND_MAX_CLASSES else 6.2, 5.2), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[assignment]
    s = point_size if point_size is not None else float(np.clip(4000.0 / max(len(emb), 1), 3.0, 30.0))
    if y is None or len(classes) > LEGEND_MAX_CLASSES:
        cmap = ListedColormap(colours)
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=idx, cmap=cmap, s=s, linewidths=0,
                        norm=BoundaryNorm(np.arange(-0.5, len(classes)), len(classes)))
        if y is not None:
            ticks = np.unique(np.linspace(0, len(classes) - 1, min(len(classes), 11)).round().astype(int))
            cbar = fig.colorbar(sc, ax=ax, ticks=ticks, label=f"class ({len(classes)} classes)")
            cbar.ax.set_yticklabels([_class_name(classes[t], class_names) for t in ticks])
            cbar.minorticks_off()
    else:
        for i, cls in enumerate(classes):
            sel = idx == i
            ax.scatter(emb[sel, 0], emb[sel, 1], s=s, color=colours[i], linewidths=0,
                       label=_class_name(cls, class_names))
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", markerscale=max(1.0, 20.0 / s),
                  ncols=1 if len(classes) <= 15 else 2, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    head = title or "t-SNE of features"
    line = _metrics_line(metrics) if show_metrics else ""
    ax.set_title(f"{head}\n{line}" if line else head, fontsize="medium")
    return fig


def plot_tsne_plotly(
    result: TSNEResult | np.ndarray,
    labels: np.ndarray | Sequence[Any] | None = None,
    class_names: Sequence[str] | Mapping[Any, str] | None = None,
    title: str | None = None,
    point_size: float = 5.0,
) -> go.Figure:
    """Interactive scatter, one legend entry per class (click to hide); hover shows sample index and class."""
    import plotly.graph_objects as go

    emb, y, metrics = _unpack(result, labels)
    classes, idx = _classes(y, len(emb))
    colours = categorical_colors(len(classes))
    fig = go.Figure()
    for i, cls in enumerate(classes):
        sel = np.flatnonzero(idx == i)
        name = _class_name(cls, class_names) if y is not None else "samples"
        fig.add_trace(go.Scattergl(
            x=emb[sel, 0], y=emb[sel, 1], mode="markers", name=name, customdata=sel,
            marker=dict(size=point_size, color=colours[i]),
            hovertemplate=f"sample %{{customdata}}<br>class {name}<extra></extra>",
        ))
    line = _metrics_line(metrics)
    head = title or "t-SNE of features"
    fig.update_layout(
        title=dict(text=f"{head}<br><sup>{line}</sup>" if line else head),
        xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False), width=760, height=600,
    )
    return fig
