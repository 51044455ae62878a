"""t-SNE metrics on separated vs random-label data, plots, and the feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from tcpa_viz import (
    embedding_metrics,
    extract_features,
    feature_cache_path,
    knn_accuracy,
    plot_tsne_matplotlib,
    plot_tsne_plotly,
    run_tsne,
    save_figure,
)


def clusters(n_per: int = 30, k: int = 4, d: int = 24, sep: float = 8.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


@pytest.fixture(scope="module")
def separated():
    x, y = clusters()
    return x, y, run_tsne(x, y, max_iter=250, pca_dims=10, random_state=0)


def test_separated_clusters_score_high(separated):
    x, y, res = separated
    assert res.embedding.shape == (120, 2)
    m = res.metrics
    assert m["knn_accuracy_features"] >= 0.97
    assert m["knn_accuracy_embedding"] >= 0.95
    assert m["silhouette_features"] > 0.6
    assert m["silhouette_embedding"] > 0.5
    assert m["trustworthiness"] > 0.85
    assert m["n_classes"] == 4 and m["knn_chance"] == pytest.approx(0.25)
    assert res.params["pca_dims"] == 10 and res.params["n_features"] == 24
    assert set(res.timings) == {"pca", "tsne", "metrics"}
    summary = json.loads(res.to_json())
    assert summary["metrics"]["silhouette_features"] == pytest.approx(m["silhouette_features"])


def test_random_labels_score_low(separated):
    x, _, res = separated
    rand = np.random.default_rng(1).integers(0, 4, size=len(x))
    assert knn_accuracy(x, rand, k=5) < 0.5
    m = embedding_metrics(x, res.embedding, rand)
    assert m["silhouette_features"] < 0.1
    assert m["silhouette_embedding"] < 0.1
    assert m["knn_accuracy_features"] < 0.5


def test_knn_is_leave_one_out():
    # two tight pairs far apart: each point's single nearest other point shares its label
    x = np.array([[0.0], [0.1], [10.0], [10.1]])
    assert knn_accuracy(x, np.array([0, 0, 1, 1]), k=1) == 1.0
    # with the point itself counted, alternating labels would score 1.0; leave-one-out gives 0
    assert knn_accuracy(x, np.array([0, 1, 0, 1]), k=1) == 0.0


def test_small_n_caps_perplexity_and_handles_no_labels():
    x, _ = clusters(n_per=5, k=2, d=6)
    res = run_tsne(x, None, max_iter=250, compute_metrics=True)
    assert res.params["perplexity"] == pytest.approx(3.0)
    assert res.params["pca_dims"] is None
    assert "silhouette_features" not in res.metrics and 0.0 <= res.metrics["trustworthiness"] <= 1.0
    with pytest.raises(ValueError):
        run_tsne(x[:3])


def test_tsne_plots(tmp_path, separated):
    _, _, res = separated
    png = save_figure(plot_tsne_matplotlib(res, class_names=["a", "b", "c", "d"], title="demo"), tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plot_tsne_matplotlib(res.embedding, labels=np.arange(120) % 40)  # > 30 classes: colour bar
    assert len(fig.axes) == 2
    legend = plot_tsne_matplotlib(res, class_names=["a", "b", "c", "d"]).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "c", "d"]
    html = save_figure(plot_tsne_plotly(res), tmp_path / "t.html").read_text()
    assert 'class="plotly-graph-div"' in html
    assert len(plot_tsne_plotly(res).data) == 4


def test_feature_cache_is_reused(tmp_path):
    images = torch.randn(10, 3, 4, 4)
    labels = torch.arange(10) % 3
    calls = []

    def feature_fn(batch):
        calls.append(batch.shape[0])
        return batch.flatten(1)[:, :5] * 2

    ds = TensorDataset(images, labels)
    first = extract_features(feature_fn, ds, name="toy-model.test", cache_dir=tmp_path, batch_size=4, progress=False)
    assert calls == [4, 4, 2] and not first.from_cache
    assert first.features.shape == (10, 5) and first.features.dtype == np.float32
    np.testing.assert_array_equal(first.labels, labels.numpy())
    np.testing.assert_allclose(first.features, images.flatten(1)[:, :5].numpy() * 2)
    assert feature_cache_path(tmp_path, "toy-model.test").is_file()
    second = extract_features(feature_fn, ds, name="toy-model.test", cache_dir=tmp_path, progress=False)
    assert second.from_cache and calls == [4, 4, 2]
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.labels, first.labels)
    # a dataset of another size does not silently reuse the stale cache
    with pytest.warns(UserWarning, match="recomputing"):
        third = extract_features(feature_fn, TensorDataset(images[:6], labels[:6]), name="toy-model.test",
                                 cache_dir=tmp_path, progress=False)
    assert not third.from_cache and len(third.features) == 6
    with pytest.raises(ValueError):
        feature_cache_path(tmp_path, "../escape")


def test_thread_policy_sets_torch_and_blas_threads(monkeypatch):
    from threadpoolctl import threadpool_info

    from tcpa_core.errors import TCPAError
    from tcpa_core.threads import THREADS_ENV, available_cores, configure_threads

    previous = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS_ENV, "1")
        assert configure_threads() == 1 and torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        monkeypatch.delenv(THREADS_ENV)
        assert configure_threads() == available_cores() == torch.get_num_threads()
        monkeypatch.setenv(THREADS_ENV, "many")
        with pytest.raises(TCPAError, match=THREADS_ENV):
            configure_threads()
    finally:
        configure_threads(previous)
