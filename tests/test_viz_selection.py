"""Prompt-selection statistics, grids and CSV export on hand-made assignments."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from tcpa_core.layout import TokenLayout
from tcpa_viz import (
    distinct_sets,
    jsonable,
    mean_jaccard_distance,
    pool_sizes,
    pool_usage,
    selection_grid,
    selection_stats,
    synthetic_layer,
    usage_entropy,
    write_assignments_csv,
)

LAYOUT = TokenLayout(num_prefix=5, grid_size=(2, 3), num_cls_prompt_keys=4, num_image_prompt_keys=10, prompt_length=2)


def test_pool_sizes_and_usage():
    assert pool_sizes(LAYOUT) == (2, 5)
    a = torch.tensor([[[0, 1], [1, 2]], [[1, 4], [0, 1]]])
    np.testing.assert_array_equal(pool_usage(a, 5), [2, 4, 1, 0, 1])
    with pytest.raises(ValueError):
        pool_usage(a, 4)


def test_entropy_extremes():
    assert usage_entropy(np.array([3, 3, 3, 3])) == pytest.approx(1.0)
    assert usage_entropy(np.array([0, 9, 0, 0])) == pytest.approx(0.0)
    assert usage_entropy(np.array([1, 1, 0, 0]), normalized=False) == pytest.approx(math.log(2))
    assert usage_entropy(np.array([1, 1, 0, 0])) == pytest.approx(0.5)
    assert math.isnan(usage_entropy(np.zeros(3)))


def test_jaccard_and_distinct_sets():
    same = torch.tensor([[0, 1], [1, 0], [0, 1]])
    assert mean_jaccard_distance(same, 4) == pytest.approx(0.0)
    assert distinct_sets(same) == 1
    disjoint = torch.tensor([[0, 1], [2, 3]])
    assert mean_jaccard_distance(disjoint, 4) == pytest.approx(1.0)
    overlap = torch.tensor([[0, 1], [1, 2]])
    assert mean_jaccard_distance(overlap, 4) == pytest.approx(2 / 3)
    three = torch.tensor([[0, 1], [1, 2], [0, 1]])  # pairs: 2/3, 0, 2/3
    assert mean_jaccard_distance(three, 4) == pytest.approx(4 / 9)
    assert distinct_sets(three) == 2
    assert math.isnan(mean_jaccard_distance(torch.tensor([[0, 1]]), 4))


def test_selection_grid_modes():
    # 2x3 grid, top-2 from a pool of 5; rows are most-similar first
    a = torch.tensor([[[4, 0], [1, 2], [0, 4], [2, 1], [2, 1], [3, 0]]])
    top1 = selection_grid(a, LAYOUT, "top1")
    np.testing.assert_array_equal(top1[0], [[4, 1, 0], [2, 2, 3]])
    np.testing.assert_array_equal(selection_grid(a, LAYOUT, "top1", rank=1)[0], [[0, 2, 4], [1, 1, 0]])
    sets = selection_grid(a, LAYOUT, "set")[0]
    # {1,2} appears 3 times -> id 0, {0,4} twice -> id 1, {0,3} once -> id 2
    np.testing.assert_array_equal(sets, [[1, 0, 1], [0, 0, 2]])
    with pytest.raises(IndexError):
        selection_grid(a, LAYOUT, "top1", rank=2)


def test_selection_stats_numbers_and_json():
    cls = {0: torch.tensor([[0], [0]]), 1: torch.tensor([[0], [1]])}
    img = {0: torch.tensor([[[0, 1]] * 6, [[0, 1]] * 6]), 1: torch.tensor([[[0, 1], [2, 3]] * 3, [[1, 4]] * 6])}
    stats = selection_stats(cls, img, 2, 5)
    assert [s["layer"] for s in stats] == [0, 1]
    s0, s1 = stats
    assert s0["cls_usage"] == [2, 0] and s0["cls_entropy"] == pytest.approx(0.0) and s0["cls_distinct_sets"] == 1
    assert s1["cls_entropy"] == pytest.approx(1.0) and s1["cls_jaccard"] == pytest.approx(1.0)
    assert s0["image_jaccard"] == pytest.approx(0.0) and s0["image_distinct_sets"] == 1.0
    assert s0["image_entries_used"] == 2
    # image 0 of layer 1: 3 tokens {0,1} and 3 tokens {2,3}: 9 of 15 pairs disjoint; image 1: all equal
    assert s1["image_jaccard"] == pytest.approx((9 / 15 + 0.0) / 2)
    assert s1["image_distinct_sets"] == 1.5 and s1["image_distinct_sets_batch"] == 3
    assert sum(s1["image_usage"]) == 2 * 6 * 2
    json.dumps(jsonable(stats), allow_nan=False)


def test_write_assignments_csv(tmp_path):
    layers = {l: synthetic_layer(LAYOUT, batch=2, heads=1, cls_topk=1, image_topk=3, seed=l) for l in (0, 5)}
    path = write_assignments_csv(
        tmp_path / "assign.csv", {l: v.cls_assign for l, v in layers.items()},
        {l: v.image_assign for l, v in layers.items()}, LAYOUT, image_ids=["a.png", "b.png"],
    )
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * (2 + 2 * 6)
    assert list(rows[0]) == ["layer", "image", "token", "query_index", "pool", "selected"]
    patch = [r for r in rows if r["layer"] == "5" and r["image"] == "b.png" and r["token"] == "patch(1,2)"]
    assert len(patch) == 1 and patch[0]["pool"] == "image" and patch[0]["query_index"] == str(5 + 5)
    assert [int(v) for v in patch[0]["selected"].split()] == layers[5].image_assign[1, 5].tolist()
    cls = [r for r in rows if r["pool"] == "cls" and r["layer"] == "0" and r["image"] == "a.png"]
    assert cls[0]["token"] == "CLS" and int(cls[0]["selected"]) == int(layers[0].cls_assign[0, 0])
