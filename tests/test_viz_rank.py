"""Rank measures against numpy SVD on matrices with known spectra."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from tcpa_core.layout import TokenLayout
from tcpa_viz import (
    aggregate_ranks,
    attention_block,
    effective_rank,
    energy_rank,
    numerical_rank,
    rank_measures,
    rank_table,
    singular_values,
    stable_rank,
    synthetic_layer,
    write_rank_csv,
    write_rank_json,
)


def with_spectrum(q: int, k: int, s: list[float], seed: int = 0) -> np.ndarray:
    """``U diag(s) V^T`` with random orthonormal U [q, r], V [k, r]."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(q, len(s))))
    v, _ = np.linalg.qr(rng.normal(size=(k, len(s))))
    return (u * np.asarray(s)) @ v.T


def test_singular_values_match_numpy():
    mats = np.stack([with_spectrum(12, 15, [5.0, 3.0, 1.0], seed=i) for i in range(4)]).reshape(2, 2, 12, 15)
    s = singular_values(torch.from_numpy(mats)).numpy()
    ref = np.linalg.svd(mats, compute_uv=False)
    assert s.shape == (2, 2, 12)
    np.testing.assert_allclose(s, ref, atol=1e-10)
    np.testing.assert_allclose(s[..., :3], np.broadcast_to([5.0, 3.0, 1.0], (2, 2, 3)), atol=1e-10)


@pytest.mark.parametrize("spectrum", [[5.0, 3.0, 1.0], [2.0], [1.0, 1.0, 1.0, 1.0, 1e-3], [7.0, 1e-9]])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numerical_rank_matches_numpy_matrix_rank(spectrum, dtype):
    a = with_spectrum(10, 14, spectrum).astype(dtype)
    got = int(rank_measures(torch.from_numpy(a))["numerical_rank"])
    assert got == int(np.linalg.matrix_rank(a))


def test_numerical_rank_known_values_and_tolerances():
    a = with_spectrum(10, 14, [5.0, 3.0, 1.0, 1e-4])
    t = torch.from_numpy(a)
    s = singular_values(t)
    assert int(numerical_rank(s, a.shape)) == 4
    assert int(numerical_rank(s, a.shape, atol=1e-3)) == 3
    assert int(numerical_rank(s, a.shape, rtol=0.5)) == 2
    for atol, rtol in [(1e-3, None), (None, 0.3), (0.5, 0.1), (2.0, 0.5)]:
        ref = int(torch.linalg.matrix_rank(t, atol=atol, rtol=rtol))
        assert int(numerical_rank(s, a.shape, atol=atol, rtol=rtol)) == ref


def test_effective_and_stable_rank_known_values():
    n = 7
    s_eye = singular_values(torch.eye(n))
    assert float(effective_rank(s_eye)) == pytest.approx(n, rel=1e-12)
    assert float(stable_rank(s_eye)) == pytest.approx(n, rel=1e-12)
    s_one = singular_values(torch.from_numpy(np.outer(np.arange(1.0, 6.0), np.arange(2.0, 9.0))))
    assert float(effective_rank(s_one)) == pytest.approx(1.0, abs=1e-9)
    assert float(stable_rank(s_one)) == pytest.approx(1.0, abs=1e-12)
    s_diag = singular_values(torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)))
    assert float(stable_rank(s_diag)) == pytest.approx(1.25)
    p = np.array([2.0, 1.0]) / 3.0
    assert float(effective_rank(s_diag)) == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_energy_rank_on_known_spectrum():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    # sigma shares: 0.4, 0.7, 0.9, 1.0 ; sigma^2 shares: 16/30, 25/30, 29/30, 1
    assert int(energy_rank(s, 0.9)) == 3
    assert int(energy_rank(s, 0.95)) == 4
    assert int(energy_rank(s, 0.99)) == 4
    assert int(energy_rank(s, 0.9, squared=True)) == 3
    assert int(energy_rank(s, 0.95, squared=True)) == 3
    assert int(energy_rank(s, 0.99, squared=True)) == 4
    assert int(energy_rank(s, 0.5, squared=True)) == 1
    a = with_spectrum(9, 11, [4.0, 3.0, 2.0, 1.0])
    m = rank_measures(torch.from_numpy(a))
    assert int(m["energy_rank_0.9"]) == 3 and int(m["energy2_rank_0.95"]) == 3 and int(m["energy_rank_0.95"]) == 4


def test_zero_matrix_measures_are_zero():
    m = rank_measures(torch.zeros(2, 5, 6))
    for name, values in m.items():
        assert torch.all(values == 0), name


def test_rank_table_rows_aggregation_and_writers(tmp_path):
    layout = TokenLayout(num_prefix=5, grid_size=(4, 6), num_cls_prompt_keys=4, num_image_prompt_keys=6)
    attn = {l: synthetic_layer(layout, batch=2, heads=3, cls_topk=2, image_topk=2, seed=l).attn for l in range(3)}
    rows = rank_table(attn, layout, block="tokens", taus=(0.9,), include_head_mean=True)
    n_measures = 2 + 3  # energy (sigma, sigma^2) + numerical, effective, stable
    assert len(rows) == 3 * 2 * (3 + 1) * n_measures
    assert {r["measure"] for r in rows} == {
        "energy_rank_0.9", "energy2_rank_0.9", "numerical_rank", "effective_rank", "stable_rank"
    }
    # the values are the measures of the token-token block, head by head
    block = attention_block(attn[1], layout, "tokens")
    assert block.shape == (2, 3, layout.num_queries, layout.num_queries)
    want = float(effective_rank(singular_values(block[1, 2])))
    got = [r["value"] for r in rows if r["layer"] == 1 and r["image"] == 1 and r["head"] == 2
           and r["measure"] == "effective_rank"]
    assert got == [pytest.approx(want)]
    agg = aggregate_ranks(rows)
    per_head = [a for a in agg if a["layer"] == 1 and a["measure"] == "stable_rank" and a["heads"] == "per-head"]
    vals = [r["value"] for r in rows if r["layer"] == 1 and r["measure"] == "stable_rank" and r["head"] != "mean"]
    assert per_head[0]["n"] == 6
    assert per_head[0]["mean"] == pytest.approx(np.mean(vals))
    assert per_head[0]["std"] == pytest.approx(np.std(vals))
    assert any(a["heads"] == "head-mean" for a in agg)

    csv_path = write_rank_csv(rows, tmp_path / "ranks.csv")
    with csv_path.open() as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == len(rows)
    assert list(read[0]) == ["layer", "head", "image", "measure", "value"]
    json_path = write_rank_json({"rows": rows, "aggregate": agg}, tmp_path / "ranks.json", meta={"block": "tokens"})
    loaded = json.loads(json_path.read_text())
    assert loaded["meta"]["block"] == "tokens"
    assert len(loaded["rows"]["rows"]) == len(rows)
