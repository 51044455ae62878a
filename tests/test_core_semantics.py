"""TCPA semantics: masks, selections, pool loss, gradients, frozen backbone, input prompts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import images_for, tiny_vit

from tcpa_core import PromptConfig, build_model, capture
from tcpa_core.prompts import PadPrompt, partial_fourier_transform

POOLS = dict(cls_pool_size=6, image_pool_size=5, cls_topk=3, image_topk=2, prompt_dropout=0.0)


def _tcpa(variant: str = "registers", **cfg):
    vit = tiny_vit(variant)
    model = build_model(vit, PromptConfig(method="tcpa", **{**POOLS, **cfg})).eval()
    return model, images_for(vit)


@pytest.mark.parametrize("prompt_length", [1, 2])
def test_mask_selects_exactly_topk_columns_of_the_own_pool(prompt_length):
    model, images = _tcpa(prompt_length=prompt_length)
    with capture(model) as cache:
        model(images)
    layout = cache.layout
    keys, queries = layout.key_slices(), layout.query_slices()
    for layer in range(model.depth):
        mask = cache["mask", layer]
        assert mask.shape == (len(images), layout.num_queries, layout.num_keys)
        assert mask[:, :, keys["prefix"]].all() and mask[:, :, keys["patches"]].all()
        prefix, patches = mask[:, queries["prefix"]], mask[:, queries["patches"]]
        assert (prefix[..., keys["cls_prompts"]].sum(-1) == POOLS["cls_topk"] * prompt_length).all()
        assert not prefix[..., keys["image_prompts"]].any()
        assert (patches[..., keys["image_prompts"]].sum(-1) == POOLS["image_topk"] * prompt_length).all()
        assert not patches[..., keys["cls_prompts"]].any()
        # the selected columns are those of the recorded assignments
        image_assign = cache["image_assign", layer]
        cols = patches[..., keys["image_prompts"]].unflatten(-1, (POOLS["image_pool_size"], prompt_length))
        chosen = torch.zeros_like(cols[..., 0]).scatter(-1, image_assign, True)
        assert torch.equal(cols.all(-1), chosen) and torch.equal(cols.any(-1), chosen)


def test_masked_attention_is_softmax_times_mask_without_renormalising():
    model, images = _tcpa()
    with capture(model) as cache:
        model(images)
    raw, masked, mask = cache["attn_raw", 1], cache["attn", 1], cache["mask", 1]
    torch.testing.assert_close(raw.sum(-1), torch.ones_like(raw.sum(-1)))
    torch.testing.assert_close(masked, raw * mask.unsqueeze(1))
    assert (masked.sum(-1) < 1).all()


def test_assignments_are_the_top_cosine_entries_and_follow_the_keys():
    model, images = _tcpa(variant="plain")
    with capture(model) as cache:
        model(images)
    x = model.backbone.norm_pre(model.backbone._pos_embed(model.backbone.patch_embed(images)))  # block 0 input
    sims = F.cosine_similarity(x[:, 1:, None], model.prompts.image_keys[0][None, None], dim=-1)
    expected = sims.argsort(-1, descending=True)[..., : POOLS["image_topk"]].sort(-1).values
    assert torch.equal(cache["image_assign", 0].sort(-1).values, expected)
    cls_sims = F.cosine_similarity(x[:, 0, None], model.prompts.cls_keys[0][None], dim=-1)
    assert torch.equal(cache["cls_assign", 0].sort(-1).values,
                       cls_sims.argsort(-1, descending=True)[:, : POOLS["cls_topk"]].sort(-1).values)
    before = cache["image_assign", 0].clone()
    with torch.no_grad():
        model.prompts.image_keys.copy_(torch.empty_like(model.prompts.image_keys).uniform_(-1, 1))
    with capture(model, layers=[0], names=["image_assign"]) as cache2:
        model(images)
    assert not torch.equal(before, cache2["image_assign", 0])


def test_random_selection_warm_up():
    model, images = _tcpa(variant="plain")
    with capture(model, names=["image_assign", "cls_assign"]) as cache:
        model(images)
        top = cache["image_assign", 0].clone()
        model.random_selection = True
        model(images)
        assert torch.equal(cache["image_assign", 0], top), "random selection is a training-only warm-up"
        model.train()
        torch.manual_seed(3)
        _, loss = model(images, return_pool_loss=True)
        picked = cache["image_assign", 0]
    assert not torch.equal(top.sort(-1).values, picked.sort(-1).values)
    assert picked.min() >= 0 and picked.max() < POOLS["image_pool_size"]
    assert (picked.sort(-1).values.diff(dim=-1) > 0).all(), "entries selected twice"
    assert loss.item() > 0


def test_gradients_reach_only_prompts_input_prompt_and_head():
    vit = tiny_vit("plain")
    model = build_model(vit, PromptConfig(method="tcpa", input_prompt="pad", pad_size=4, **POOLS))
    model.train()
    assert not model.backbone.training and model.head.training
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    logits, pool_loss = model(images_for(vit), return_pool_loss=True)
    (F.cross_entropy(logits, torch.tensor([0, 1, 2])) + 0.01 * pool_loss).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == {
        "head.weight", "head.bias", "prompts.cls_prompts", "prompts.image_prompts", "prompts.cls_keys",
        "prompts.image_keys", "input_prompt.top", "input_prompt.bottom", "input_prompt.left", "input_prompt.right",
    }
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.backbone.parameters())
    optimizer.step()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key


def test_pad_prompt_is_a_frame_and_vfpt_transforms_a_fraction():
    pad = PadPrompt((16, 12), pad=3)
    with torch.no_grad():
        for p in pad.parameters():
            p.fill_(1.0)
    frame = pad.frame()[0, 0]
    assert frame.shape == (16, 12)
    assert frame[3:-3, 3:-3].abs().sum() == 0 and (frame[:3] == 1).all() and (frame[:, :3] == 1).all()
    prompts = torch.randn(2, 8, 16)
    out = partial_fourier_transform(prompts, 0.5)
    torch.testing.assert_close(out[:, 4:], prompts[:, 4:])
    torch.testing.assert_close(out[:, :4], torch.fft.fft2(prompts[:, :4]).real)


def test_train_mode_prompt_dropout_changes_outputs_eval_does_not():
    vit = tiny_vit("plain")
    model = build_model(vit, PromptConfig(method="vpt-deep", num_prompts=4, prompt_dropout=0.5))
    images = images_for(vit)
    model.train()
    assert not torch.equal(model(images), model(images))
    model.eval()
    assert torch.equal(model(images), model(images))
