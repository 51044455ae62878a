"""Per-token attention maps, prompt-column maps and rollout on synthetic masked attention."""

from __future__ import annotations

import pytest
import torch

from tcpa_core.errors import InputShapeError
from tcpa_core.layout import TokenLayout
from tcpa_viz import (
    attention_rollout,
    key_column_map,
    key_labels,
    query_labels,
    reduce_heads,
    resolve_query,
    rollout_map,
    synthetic_layer,
    token_attention,
    token_token_block,
)

# CLS + 4 registers, non-square 4x6 grid, pools with prompt_length 2 and shared prompts: every group present.
LAYOUT = TokenLayout(
    num_prefix=5, grid_size=(4, 6), num_cls_prompt_keys=6, num_image_prompt_keys=8, num_shared_prompt_keys=3,
    prompt_length=2,
)


@pytest.fixture(scope="module")
def layer():
    return synthetic_layer(LAYOUT, batch=3, heads=4, cls_topk=2, image_topk=2, seed=1)


def test_synthetic_rows_are_masked_and_sum_below_one(layer):
    sums = layer.attn.sum(-1)
    assert torch.all(sums < 1.0) and torch.all(sums > 0.0)
    torch.testing.assert_close(layer.attn_raw.sum(-1), torch.ones_like(sums))


@pytest.mark.parametrize("query", ["cls", "register:0", "register:3", (0, 0), (2, 3), (3, 5), 7])
@pytest.mark.parametrize("heads", ["mean", 2, -1])
def test_parts_add_up_to_the_row_sum(layer, query, heads):
    ta = token_attention(layer.attn, LAYOUT, query, heads=heads)
    q = resolve_query(LAYOUT, query)
    per_head = layer.attn[:, :, q, :]
    row = per_head.mean(1) if heads == "mean" else per_head[:, heads]
    expected = row.sum(-1)
    assert ta.grid.shape == (3, 4, 6)
    assert ta.prefix_weights.shape == (3, 5)
    widths = {k: v.shape[-1] for k, v in ta.prompt_weights.items()}
    assert widths == {"cls_prompts": 6, "image_prompts": 8, "prompts": 3}
    total = ta.grid.sum((1, 2)) + ta.prompt_total() + ta.prefix_weights.sum(-1)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(ta.row_sum, expected)
    assert torch.all(ta.row_sum < 1.0)
    torch.testing.assert_close(ta.cls_weight, row[:, 0])


def test_grid_is_row_major_on_the_patch_grid(layer):
    ta = token_attention(layer.attn, LAYOUT, "cls")
    patch_cols = layer.attn[:, :, 0, LAYOUT.key_slices()["patches"]].mean(1)
    r, c = 2, 5
    torch.testing.assert_close(ta.grid[:, r, c], patch_cols[:, r * 6 + c])


def test_mask_pattern_shows_in_prompt_weights(layer):
    cls = token_attention(layer.attn, LAYOUT, "cls")
    patch = token_attention(layer.attn, LAYOUT, (1, 4))
    assert torch.all(cls.prompt_weights["image_prompts"] == 0)
    assert torch.all(patch.prompt_weights["cls_prompts"] == 0)
    assert torch.all(cls.prompt_weights["prompts"] > 0)
    # CLS sees exactly its 2 selected CLS-pool entries (2 columns each)
    assert torch.all((cls.pool_entry_weights("cls_prompts") > 0).sum(-1) == 2)
    chosen = (cls.pool_entry_weights("cls_prompts") > 0).nonzero()[:, 1].reshape(3, 2).sort(-1).values
    torch.testing.assert_close(chosen, layer.cls_assign.sort(-1).values)


def test_max_heads_dominates_mean(layer):
    m = token_attention(layer.attn, LAYOUT, (0, 1), heads="mean")
    x = token_attention(layer.attn, LAYOUT, (0, 1), heads="max")
    assert torch.all(x.grid >= m.grid - 1e-7)
    assert torch.all(x.row_sum >= m.row_sum)


def test_key_column_map(layer):
    s = LAYOUT.key_slices()
    m = key_column_map(layer.attn, LAYOUT, "image_prompts", 3)
    want = layer.attn[:, :, 5:, s["image_prompts"].start + 3].mean(1).reshape(3, 4, 6)
    torch.testing.assert_close(m, want)
    entry = key_column_map(layer.attn, LAYOUT, "image_prompts", 1, pool_entry=True)
    cols = layer.attn[:, :, 5:, s["image_prompts"].start + 2 : s["image_prompts"].start + 4].sum(-1).mean(1)
    torch.testing.assert_close(entry, cols.reshape(3, 4, 6))
    selected = (layer.image_assign == 1).any(-1).reshape(3, 4, 6)
    assert torch.all((entry > 0) == selected)
    assert torch.all(key_column_map(layer.attn, LAYOUT, "cls_prompts", 0) == 0)
    torch.testing.assert_close(key_column_map(layer.attn, LAYOUT, "prefix", 0, heads=1),
                               layer.attn[:, 1, 5:, 0].reshape(3, 4, 6))


def test_labels_and_errors(layer):
    assert query_labels(LAYOUT)[:6] == ["CLS", "reg0", "reg1", "reg2", "reg3", "patch(0,0)"]
    keys = key_labels(LAYOUT)
    assert len(keys) == LAYOUT.num_keys
    assert keys[5:8] == ["clsP0.0", "clsP0.1", "clsP1.0"] and keys[19] == "P0" and keys[22] == "patch(0,0)"
    assert resolve_query(LAYOUT, (3, 5)) == 5 + 23
    with pytest.raises(IndexError):
        resolve_query(LAYOUT, (4, 0))
    with pytest.raises(IndexError):
        resolve_query(LAYOUT, "register:4")
    with pytest.raises(InputShapeError):
        token_attention(layer.attn[..., :-1], LAYOUT, "cls")
    with pytest.raises(IndexError):
        reduce_heads(layer.attn, 4)


def test_rollout_rows_and_identity():
    attns = [synthetic_layer(LAYOUT, batch=2, heads=3, cls_topk=2, image_topk=2, seed=s).attn for s in range(3)]
    t = LAYOUT.num_queries
    for mode in ("renormalize", "self"):
        r = attention_rollout(attns, LAYOUT, missing_mass=mode)
        assert r.shape == (2, t, t)
        torch.testing.assert_close(r.sum(-1), torch.ones(2, t, dtype=torch.float64))
    dropped = attention_rollout(attns, LAYOUT, missing_mass="drop")
    assert torch.all(dropped.sum(-1) < 1.0)
    # a token that only attends to itself rolls out to the identity
    eye = torch.zeros(1, 1, t, LAYOUT.num_keys)
    cols = list(range(5)) + list(range(5 + LAYOUT.num_prompt_keys, LAYOUT.num_keys))
    eye[0, 0, torch.arange(t), cols] = 0.7
    torch.testing.assert_close(attention_rollout({0: eye, 1: eye}, LAYOUT), torch.eye(t, dtype=torch.float64)[None])


def test_rollout_matches_manual_product():
    a0 = synthetic_layer(LAYOUT, batch=1, heads=2, cls_topk=2, image_topk=2, seed=5).attn
    a1 = synthetic_layer(LAYOUT, batch=1, heads=2, cls_topk=2, image_topk=2, seed=6).attn
    eye = torch.eye(LAYOUT.num_queries, dtype=torch.float64)

    def step(a):
        b = token_token_block(a.mean(1).double(), LAYOUT)[0]
        return 0.5 * b / b.sum(-1, keepdim=True) + 0.5 * eye

    want = step(a1) @ step(a0)
    torch.testing.assert_close(attention_rollout({1: a1, 0: a0}, LAYOUT)[0], want)
    m = rollout_map(attention_rollout([a0, a1], LAYOUT), LAYOUT, (1, 2))
    assert m.shape == (1, 4, 6)
    torch.testing.assert_close(m[0].flatten(), want[5 + 8, 5:])
