"""tcpa_viz on a real capture of a small TCPA model: the maps agree with the recorded assignments."""

from __future__ import annotations

import pytest
import torch

from tcpa_core import PromptConfig, build_model, capture
from tcpa_viz import (
    attention_rollout,
    key_column_map,
    pool_sizes,
    rank_table,
    selection_grid,
    selection_stats,
    token_attention,
)


@pytest.fixture(scope="module")
def cache():
    torch.manual_seed(0)
    cfg = PromptConfig(method="tcpa", cls_pool_size=6, image_pool_size=8, cls_topk=2, image_topk=3)
    model = build_model("tcpa_demo_vit", cfg, num_classes=10, pretrained=False).eval()
    with torch.no_grad(), capture(model) as recorded:
        model(torch.randn(2, 3, 64, 64))
    return recorded


def test_token_maps_follow_the_recorded_selection(cache):
    layout = cache.layout
    assert pool_sizes(layout) == (6, 8)
    attn = cache["attn", -1]
    h, w = layout.grid_size
    for row, col in [(0, 0), (h - 1, w // 2)]:
        ta = token_attention(attn, layout, (row, col))
        q = layout.patch_query_index(row, col)
        torch.testing.assert_close(ta.row_sum, attn[:, :, q].mean(1).sum(-1))
        assert torch.all(ta.row_sum < 1.0)
        seen = ta.pool_entry_weights("image_prompts") > 0
        chosen = torch.zeros_like(seen).scatter_(1, cache["image_assign", -1][:, row * w + col], True)
        assert torch.equal(seen, chosen)
        assert torch.all(ta.prompt_weights["cls_prompts"] == 0)
    cls = token_attention(attn, layout, "cls")
    seen = cls.pool_entry_weights("cls_prompts") > 0
    assert torch.equal(seen, torch.zeros_like(seen).scatter_(1, cache["cls_assign", -1], True))


def test_prompt_column_map_and_selection_grid_agree(cache):
    layout = cache.layout
    assign = cache["image_assign", 2]
    m = key_column_map(cache["attn", 2], layout, "image_prompts", 5, pool_entry=True)
    assert torch.equal(m > 0, (assign == 5).any(-1).reshape(2, *layout.grid_size))
    top1 = selection_grid(assign, layout, "top1")
    assert (top1 == assign[..., 0].reshape(2, *layout.grid_size).numpy()).all()


def test_layer_summaries_run_on_the_capture(cache):
    layout = cache.layout
    layers = cache.layers()
    attns = {l: cache["attn", l] for l in layers}
    rollout = attention_rollout(attns, layout)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, layout.num_queries, dtype=torch.float64))
    rows = rank_table(attns, layout, block="tokens", taus=(0.9,))
    assert {r["layer"] for r in rows} == set(layers)
    stats = selection_stats({l: cache["cls_assign", l] for l in layers}, {l: cache["image_assign", l] for l in layers},
                            *pool_sizes(layout))
    assert len(stats) == len(layers) and all(sum(s["image_usage"]) == 2 * layout.num_patches * 3 for s in stats)
