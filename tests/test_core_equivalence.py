"""The prompted model against timm's own forward and against the dense reference formulation."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import images_for, tiny_vit
from timm.utils import AttentionExtract

from tcpa_core import PromptConfig, build_model, capture
from tcpa_core.reference import reference_forward

POOLS = dict(cls_pool_size=6, image_pool_size=5, cls_topk=3, image_topk=2, prompt_dropout=0.0)


def test_method_none_matches_timm_forward(vit_variant):
    vit = tiny_vit(vit_variant)
    images = images_for(vit)
    expected = vit(images)
    model = build_model(copy.deepcopy(vit), PromptConfig(method="none")).eval()
    torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=0)


def test_method_none_matches_timm_registry_model_with_registers():
    import timm

    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, depth=2,
                            embed_dim=64, num_heads=2, num_classes=4).eval()
    images = images_for(vit, batch=2)
    model = build_model(copy.deepcopy(vit), PromptConfig(method="none")).eval()
    assert model.num_prefix == 5
    torch.testing.assert_close(model(images), vit(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_captured_attention_matches_timm_attention_extract(fused):
    vit = tiny_vit("registers")
    for block in vit.blocks:
        block.attn.fused_attn = False  # AttentionExtract traces the explicit softmax
    images = images_for(vit)
    extractor = AttentionExtract(copy.deepcopy(vit), method="fx")
    expected = extractor(images)
    model = build_model(copy.deepcopy(vit), PromptConfig(method="none")).eval()
    for block in model.backbone.blocks:
        block.attn.fused_attn = fused
    with capture(model) as cache:
        model(images)
    names = sorted(expected)
    assert len(names) == 2
    for layer, name in enumerate(names):
        torch.testing.assert_close(cache["attn", layer], expected[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("fourier", [False, True])
@pytest.mark.parametrize("prompt_length", [1, 3])
@pytest.mark.parametrize("variant", ["plain", "registers", "non_square"])
def test_tcpa_matches_dense_reference(fourier, prompt_length, variant):
    vit = tiny_vit(variant)
    images = images_for(vit)
    cfg = PromptConfig(method="tcpa", fourier=fourier, prompt_length=prompt_length, **POOLS)
    model = build_model(vit, cfg).eval()
    with torch.no_grad():
        logits, pool_loss = model(images, return_pool_loss=True)
        ref_logits, ref_loss = reference_forward(model, images)
        with capture(model):
            captured = model(images)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(pool_loss, ref_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(captured, logits, atol=1e-5, rtol=0)
    assert pool_loss.item() > 0


@pytest.mark.parametrize("method", ["vpt-deep", "r-tcpa"])
def test_other_methods_match_dense_reference(method):
    vit = tiny_vit("registers")
    images = images_for(vit)
    model = build_model(vit, PromptConfig(method=method, num_prompts=7, prompt_length=2, **POOLS)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_forward(model, images)[0], atol=1e-5, rtol=0)


def test_vpt_shallow_matches_timm_blocks_on_the_prompted_sequence():
    vit = tiny_vit("plain")
    images = images_for(vit)
    model = build_model(copy.deepcopy(vit), PromptConfig(method="vpt-shallow", num_prompts=4)).eval()
    prompts = model.prompts.prompts[0]
    with torch.no_grad():
        x = vit._pos_embed(vit.patch_embed(images))
        x = torch.cat([x[:, :1], prompts.expand(len(images), -1, -1), x[:, 1:]], dim=1)
        x = vit.norm(vit.blocks(x))
        expected = model.head(x[:, 0])
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=0)


def test_r_tcpa_equals_tcpa_with_full_topk():
    vit = tiny_vit("plain")
    images = images_for(vit)
    full = dict(POOLS, cls_topk=POOLS["cls_pool_size"], image_topk=POOLS["image_pool_size"])
    tcpa = build_model(copy.deepcopy(vit), PromptConfig(method="tcpa", **full)).eval()
    rtcpa = build_model(copy.deepcopy(vit), PromptConfig(method="r-tcpa", **POOLS)).eval()
    state = {k: v for k, v in tcpa.trainable_state_dict().items() if "keys" not in k}
    rtcpa.load_trainable_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(rtcpa(images), tcpa(images), atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["none", "vpt-shallow", "vpt-deep", "vfpt", "vp", "tcpa", "r-tcpa"])
def test_fast_path_equals_capture_path(method):
    vit = tiny_vit("registers")
    images = images_for(vit)
    cfg = PromptConfig(method=method, input_prompt="conv" if method == "tcpa" else None, **POOLS)
    model = build_model(vit, cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        fast = model(images)
        with capture(model) as cache:
            slow = model(images)
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["features"], model.forward_features(images), atol=1e-5, rtol=0)
