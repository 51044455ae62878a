"""intervene(): masking, removing, selection rules and generic hooks, against independent computations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import images_for, tiny_vit

from tcpa_core import PromptConfig, PromptConfigError, UnsupportedModelError, build_model, capture, intervene

POOLS = dict(cls_pool_size=8, image_pool_size=12, cls_topk=2, image_topk=3, prompt_dropout=0.0)


def _model(method: str = "tcpa", variant: str = "plain", seed: int = 0, **cfg):
    vit = tiny_vit(variant, seed=seed)
    torch.manual_seed(seed + 7)
    model = build_model(vit, PromptConfig(method=method, **{**POOLS, **cfg})).eval()
    return model, images_for(vit)


def _no_edits(model) -> bool:
    return model._block_edits is None and not any(p._edits for h in model.hooks for p in h.children()) \
        and not model.hook_features._edits


def _assignments(model, images):
    with torch.no_grad(), capture(model, names=["cls_assign", "image_assign"]) as cache:
        model(images)
    return cache


# ------------------------------------------------------------------------------------------ mask
def test_masking_an_entry_no_token_selected_leaves_logits_unchanged():
    model, images = _model()
    cache = _assignments(model, images)
    with torch.no_grad():
        base = model(images)
    found = 0
    for layer in range(model.depth):
        for pool, size, name in (("image", 12, "image_assign"), ("cls", 8, "cls_assign")):
            used = set(cache[name, layer].flatten().tolist())
            unused = sorted(set(range(size)) - used)
            if not unused:
                continue
            found += 1
            with torch.no_grad(), intervene(model, mask_prompts={layer: {pool: unused}}):
                torch.testing.assert_close(model(images), base, atol=1e-6, rtol=0)
            used_entry = sorted(used)[0]
            with torch.no_grad(), intervene(model, mask_prompts={layer: {pool: [used_entry]}}):
                assert (model(images) - base).abs().max() > 1e-5, "masking a selected entry must matter"
    assert found >= 2


def _direct_block_without_prompt_values(model, layer: int, x: torch.Tensor) -> torch.Tensor:
    """Block ``layer`` written out: softmax over [prefix | every prompt | patches], prompt columns then
    multiplied by 0 (no renormalisation)."""
    block, pools, n = model.backbone.blocks[layer], model.prompts, model.num_prefix
    attn = block.attn
    heads, hd = attn.num_heads, attn.head_dim
    prompts = torch.cat([pools.cls_prompts[layer].flatten(0, 1), pools.image_prompts[layer].flatten(0, 1)])
    b, t, d = x.shape
    seq = torch.cat([x[:, :n], prompts.expand(b, -1, -1), x[:, n:]], dim=1)
    qkv = attn.qkv(block.norm1(seq)).reshape(b, seq.shape[1], 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    p = prompts.shape[0]
    rows = torch.cat([torch.arange(n), torch.arange(n + p, n + p + t - n)])
    weights = torch.softmax(q[:, :, rows] @ k.transpose(-1, -2) * attn.scale, dim=-1)
    weights[..., n:n + p] = 0.0
    out = (weights @ v).transpose(1, 2).reshape(b, t, d)
    x = x + attn.proj(out)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("captured", [False, True])
def test_masking_every_prompt_of_a_block_equals_a_direct_computation(captured):
    model, images = _model()
    everything = {1: {"cls": range(8), "image": range(12)}}
    with torch.no_grad():
        x = model.run_blocks(model.embed(images), 0, 1)[0]
        expected = model.head_from_tokens(_direct_block_without_prompt_values(model, 1, x))
        with intervene(model, mask_prompts=everything):
            if captured:
                with capture(model, layers=[1]) as cache:
                    got = model(images)
                keys = cache.layout.key_slices()
                assert not cache["mask", 1][..., keys["cls_prompts"]].any()
                assert not cache["mask", 1][..., keys["image_prompts"]].any()
                assert (cache["attn_raw", 1][..., keys["image_prompts"]] > 0).all(), "still in the softmax"
            else:
                got = model(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ remove
def test_remove_reselects_among_the_rest_and_drops_the_key_from_the_softmax():
    model, images = _model()
    with torch.no_grad(), capture(model, names=["image_assign", "sim"]) as cache:
        model(images)
    top1 = cache["image_assign", 0][..., 0]
    entry = int(top1.flatten().mode().values)
    with torch.no_grad(), intervene(model, remove_prompts={0: {"image": [entry]}}):
        with capture(model, layers=[0], names=["image_assign", "sim", "attn_raw", "attn"]) as edited:
            model(images)
    chosen = edited["image_assign", 0]
    assert chosen.shape == cache["image_assign", 0].shape, "k stays when enough entries are left"
    assert not (chosen == entry).any()
    sim = edited["sim", 0].clone()
    sim[..., entry] = float("-inf")
    expected = sim.topk(POOLS["image_topk"], dim=-1).indices
    assert torch.equal(chosen.sort(-1).values, expected.sort(-1).values)
    col = edited.layout.key_slices()["image_prompts"].start + entry
    raw = edited["attn_raw", 0]
    assert (raw[..., col] == 0).all() and (edited["attn", 0][..., col] == 0).all()
    torch.testing.assert_close(raw.sum(-1), torch.ones_like(raw.sum(-1)))


def test_remove_caps_k_at_what_is_left():
    model, images = _model()
    keep = 1
    with torch.no_grad(), intervene(model, remove_prompts={-1: {"image": [e for e in range(12) if e != keep]}}):
        cache = _assignments(model, images)
        logits = model(images)
    assert cache["image_assign", -1].shape[-1] == 1 and (cache["image_assign", -1] == keep).all()
    assert torch.isfinite(logits).all()


def test_removing_a_whole_pool_gives_no_selection_and_a_finite_loss():
    model, images = _model()
    with torch.no_grad(), intervene(model, remove_prompts={0: {"cls": range(8), "image": range(12)}}):
        logits, loss = model(images, return_pool_loss=True)
        cache = _assignments(model, images)
    assert cache["image_assign", 0].shape[-1] == 0 and cache["cls_assign", 0].shape[-1] == 0
    assert torch.isfinite(logits).all() and torch.isfinite(loss)


# ------------------------------------------------------------------------------------------ selection rules
def test_selection_all_equals_r_tcpa_with_the_same_pools():
    tcpa, images = _model("tcpa")
    rtcpa = build_model(copy.deepcopy(tcpa.backbone), PromptConfig(method="r-tcpa", **POOLS),
                        num_classes=tcpa.num_classes).eval()
    rtcpa.head.load_state_dict(tcpa.head.state_dict())
    rtcpa.load_trainable_state_dict({k: v for k, v in tcpa.trainable_state_dict().items() if "keys" not in k})
    with torch.no_grad():
        expected = rtcpa(images)
        assert (tcpa(images) - expected).abs().max() > 1e-4, "top-k and all must differ here"
        with intervene(tcpa, selection="all"):
            torch.testing.assert_close(tcpa(images), expected, atol=1e-6, rtol=0)


def test_selection_random_is_seeded_and_distinct():
    model, images = _model()
    with torch.no_grad():
        base = model(images)
        with intervene(model, selection="random", seed=3):
            first, cache = model(images), _assignments(model, images)
        with intervene(model, selection="random", seed=3):
            again = model(images)
        with intervene(model, selection="random", seed=4):
            other = model(images)
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, base)
    picked = cache["image_assign", 0].sort(-1).values
    assert (picked.diff(dim=-1) > 0).all() and picked.max() < 12


def test_selection_shared_uses_the_top_k_of_the_mean_patch_token():
    model, images = _model()
    with torch.no_grad(), intervene(model, selection="shared"):
        with capture(model, names=["resid_pre", "image_assign", "cls_assign", "cls_sim"]) as cache:
            model(images)
    for layer in range(model.depth):
        x = cache["resid_pre", layer]
        mean = x[:, 1:].mean(dim=1)
        sims = F.cosine_similarity(mean[:, None], model.prompts.image_keys[layer][None], dim=-1)
        expected = sims.topk(POOLS["image_topk"], dim=-1).indices.sort(-1).values
        got = cache["image_assign", layer].sort(-1).values
        assert torch.equal(got, expected[:, None].expand_as(got))
        cls_top = cache["cls_sim", layer][:, 0].topk(POOLS["cls_topk"], dim=-1).indices
        assert torch.equal(cache["cls_assign", layer].sort(-1).values, cls_top.sort(-1).values)


def test_selection_topk_overrides_the_training_warm_up():
    model, images = _model()
    with torch.no_grad():
        expected = _assignments(model, images)["image_assign", 0]
        model.train()
        model.random_selection = True
        with intervene(model, selection="topk"):
            assert torch.equal(_assignments(model, images)["image_assign", 0], expected)


# ------------------------------------------------------------------------------------------ restore, nest
def test_intervention_is_undone_after_an_exception():
    model, images = _model()
    with torch.no_grad():
        base = model(images)
        with pytest.raises(RuntimeError, match="inside"):
            with intervene(model, mask_prompts={0: {"image": range(12)}}, selection="random",
                           hooks={("attn", 1): lambda value, layer: value * 0}):
                assert not torch.equal(model(images), base)
                raise RuntimeError("inside")
        assert _no_edits(model)
        assert torch.equal(model(images), base)


def test_interventions_nest():
    model, images = _model()
    a, b = {0: {"image": [1, 2, 3]}}, {1: {"cls": [0, 1, 2]}, 0: {"image": [4]}}
    with torch.no_grad():
        base = model(images)
        with intervene(model, mask_prompts={0: {"image": [1, 2, 3, 4]}, 1: {"cls": [0, 1, 2]}}):
            both = model(images)
        with intervene(model, mask_prompts=a):
            outer = model(images)
            with intervene(model, mask_prompts=b, selection="random"):
                with intervene(model, selection="topk"):
                    assert torch.equal(model(images), both)
            assert torch.equal(model(images), outer)
        assert _no_edits(model) and torch.equal(model(images), base)
        assert not torch.equal(outer, base) and not torch.equal(both, outer)


def test_nested_generic_hooks_run_outer_first():
    model, images = _model("none")
    seen = []
    with torch.no_grad():
        with intervene(model, hooks={"features": lambda v, layer: seen.append("outer") or v + 1}):
            with intervene(model, hooks={"features": lambda v, layer: seen.append("inner") or v * 2}):
                with capture(model, names=["features"]) as cache:
                    model(images)
        plain = model.forward_features(images)
    assert seen == ["outer", "inner"]
    torch.testing.assert_close(cache["features"], (plain + 1) * 2)


# ------------------------------------------------------------------------------------------ fast == capture
INTERVENTIONS = {
    "mask": dict(mask_prompts={0: {"image": [0, 5]}, -1: {"cls": [1]}}),
    "remove": dict(remove_prompts={1: {"image": [2, 7], "cls": [0]}}),
    "random": dict(selection="random", seed=5),
    "shared": dict(selection="shared"),
    "all": dict(selection="all"),
    "hook": dict(hooks={("image_assign", 0): lambda v, layer: v.flip(-1).roll(1, dims=1)}),
    "mask+remove": dict(mask_prompts={0: {"image": [3]}}, remove_prompts={0: {"image": [3, 4]}}),
}


@pytest.mark.parametrize("kind", sorted(INTERVENTIONS))
@pytest.mark.parametrize("method", ["tcpa", "vfpt+tcpa"])
def test_fast_path_equals_capture_path_under_interventions(kind, method):
    model, images = _model(method, variant="registers")
    with torch.no_grad():
        base = model(images)
        with intervene(model, **INTERVENTIONS[kind]):
            fast = model(images)
            with capture(model) as cache:
                slow = model(images)
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=0)
    assert (fast - base).abs().max() > 1e-6
    torch.testing.assert_close(cache["attn", 0], cache["attn_raw", 0] * cache["mask", 0].unsqueeze(1))


def test_r_tcpa_mask_and_remove_on_both_paths():
    model, images = _model("r-tcpa", variant="registers")
    with torch.no_grad(), intervene(model, mask_prompts={0: {"image": [1]}}, remove_prompts={1: {"cls": [2]}}):
        fast = model(images)
        with capture(model) as cache:
            slow = model(images)
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=0)
    keys = cache.layout.key_slices()
    assert not cache["mask", 0][..., keys["image_prompts"].start + 1].any()
    assert (cache["attn_raw", 1][..., keys["cls_prompts"].start + 2] == 0).all()


def test_negative_layers_address_blocks_from_the_end():
    model, images = _model()
    with torch.no_grad():
        with intervene(model, mask_prompts={-1: {"image": [0, 1, 2]}}):
            neg = model(images)
        with intervene(model, mask_prompts={model.depth - 1: {"image": [0, 1, 2]}}):
            pos = model(images)
    assert torch.equal(neg, pos)


# ------------------------------------------------------------------------------------------ generic hooks
def test_generic_hook_replacing_image_assign_changes_the_mask_accordingly():
    model, images = _model()

    def fixed(value, layer):
        assert layer == 1 and value.shape == (len(images), 16, POOLS["image_topk"])
        return torch.tensor([4, 9, 11]).expand_as(value)

    with torch.no_grad(), intervene(model, hooks={("image_assign", 1): fixed}):
        with capture(model, layers=[1]) as cache:
            model(images)
    keys, queries = cache.layout.key_slices(), cache.layout.query_slices()
    patch_rows = cache["mask", 1][:, queries["patches"], keys["image_prompts"]]
    expected = torch.zeros(12, dtype=torch.bool)
    expected[[4, 9, 11]] = True
    assert torch.equal(patch_rows, expected.expand_as(patch_rows))
    assert (cache["image_assign", 1] == torch.tensor([4, 9, 11])).all()


@pytest.mark.parametrize("method", ["none", "vpt-deep", "tcpa"])
def test_hook_on_attention_is_used_downstream_and_carries_gradients(method):
    model, images = _model(method)
    images.requires_grad_(True)  # method "none" trains nothing before the attention
    grads = []

    def keep(value, layer):
        value.retain_grad()
        grads.append(value)

    with intervene(model, hooks={("attn", -1): keep}):
        model(images).sum().backward()
    assert grads and grads[0].grad is not None and grads[0].grad.abs().sum() > 0
    with torch.no_grad():
        base = model(images)
        with intervene(model, hooks={("attn", -1): lambda v, layer: v * 0.5}):
            halved = model(images)
    assert (halved - base).abs().max() > 1e-4


def test_hook_on_resid_pre_and_prompts_replaces_them():
    model, images = _model()
    with torch.no_grad():
        x = model.embed(images)
        zero_block0 = model.head_from_tokens(model.run_blocks(torch.zeros_like(x))[0])
        with intervene(model, hooks={("resid_pre", 0): lambda v, layer: torch.zeros_like(v)}):
            torch.testing.assert_close(model(images), zero_block0, atol=1e-6, rtol=0)
        with intervene(model, hooks={("prompts", 0): lambda v, layer: torch.zeros_like(v)}):
            zero_prompts = model(images)
        with torch.no_grad():
            saved = model.prompts.cls_prompts[0].clone(), model.prompts.image_prompts[0].clone()
            model.prompts.cls_prompts[0].zero_()
            model.prompts.image_prompts[0].zero_()
            expected = model(images)
            model.prompts.cls_prompts[0].copy_(saved[0])
            model.prompts.image_prompts[0].copy_(saved[1])
    torch.testing.assert_close(zero_prompts, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ validation
BAD = [
    (dict(mask_prompts={2: {"image": [0]}}), "block 2 is out of range"),
    (dict(mask_prompts={-3: {"image": [0]}}), "block -3 is out of range"),
    (dict(mask_prompts={"0": {"image": [0]}}), "integer block indices, got str"),
    (dict(mask_prompts={0: {"text": [0]}}), "unknown pool 'text'"),
    (dict(remove_prompts={0: {"image": [12]}}), "entry 12 does not exist"),
    (dict(remove_prompts={0: {"cls": [-1]}}), "entry -1 does not exist"),
    (dict(mask_prompts={0: {"image": ["a"]}}), "entries must be integers"),
    (dict(mask_prompts={0: {"image": [True]}}), "entries must be integers"),
    (dict(mask_prompts=[0]), "must map block"),
    (dict(selection="best"), "unknown selection 'best'"),
    (dict(seed="1", selection="random"), "seed must be an integer"),
    (dict(hooks={("attention", 0): lambda v, layer: v}), "unknown hook point 'attention'"),
    (dict(hooks={("attn", 5): lambda v, layer: v}), "block 5 is out of range"),
    (dict(hooks={"attn": lambda v, layer: v}), "is per block"),
    (dict(hooks={("features", 0): lambda v, layer: v}), "belongs to the whole model"),
    (dict(hooks={("attn", 0): 3}), "must be a function"),
]


@pytest.mark.parametrize("kwargs, match", BAD)
def test_bad_arguments_raise_before_any_forward(kwargs, match):
    model, images = _model()
    calls = []
    handle = model.backbone.patch_embed.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(PromptConfigError, match=match):
        with intervene(model, **kwargs):
            model(images)
    handle.remove()
    assert calls == [] and _no_edits(model)


@pytest.mark.parametrize("method, kwargs, match", [
    ("vpt-deep", dict(mask_prompts={0: {"image": [0]}}), "has no prompt pools"),
    ("none", dict(selection="all"), "has no prompt pools"),
    ("r-tcpa", dict(selection="random"), "does not do"),
    ("r-tcpa", dict(hooks={("image_assign", 0): lambda v, layer: v}), "would never run"),
    ("vpt-deep", dict(hooks={("sim", 0): lambda v, layer: v}), "would never run"),
    ("vpt-shallow", dict(hooks={("prompts", 1): lambda v, layer: v}), r"only in blocks \[0\]"),
])
def test_interventions_a_method_cannot_take_are_refused(method, kwargs, match):
    model, images = _model(method)
    calls = []
    handle = model.backbone.patch_embed.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(PromptConfigError, match=match):
        with intervene(model, **kwargs):
            model(images)
    handle.remove()
    assert calls == [] and _no_edits(model)


def test_intervene_needs_a_prompted_vit():
    with pytest.raises(UnsupportedModelError, match="needs a PromptedViT"):
        with intervene(tiny_vit("plain"), selection="all"):
            pass


# ------------------------------------------------------------------------------------------ reruns
@pytest.mark.parametrize("edit", [
    {}, {"mask_prompts": {-1: {"cls": [0, 1]}}}, {"remove_prompts": {-1: {"cls": [3], "image": [5]}}},
    {"selection": "shared"}, {"selection": "all"},
])
@pytest.mark.parametrize("variant", ["plain", "registers"])
def test_logits_from_the_class_token_row_equal_the_full_rerun(edit, variant):
    """``logits_from`` computes the last block for the class-token row only; it must equal running every row."""
    model, images = _model(variant=variant)
    with torch.no_grad(), intervene(model, **edit):
        stream = model.run_blocks(model.embed(images), 0, 1)[0]
        full = model.head_from_tokens(model.run_blocks(stream, 1)[0])
        torch.testing.assert_close(model.logits_from(stream, 1), full, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.logits_from(model.embed(images)), model(images), atol=1e-5, rtol=0)


def test_logits_from_refuses_a_block_that_does_not_exist():
    model, images = _model()
    with torch.no_grad(), pytest.raises(PromptConfigError, match="block 2 is out of range"):
        model.logits_from(model.embed(images), 2)
