"""Clear errors on bad input, and capture() bookkeeping: names, shapes, layers, dtype, hooks, memory."""

from __future__ import annotations

import gc
import warnings

import pytest
import timm
import torch
from conftest import images_for, tiny_vit

from tcpa_core import (
    InputShapeError,
    PromptConfig,
    PromptConfigError,
    UnsupportedModelError,
    build_model,
    capture,
)

POOLS = dict(cls_pool_size=6, image_pool_size=5, cls_topk=3, image_topk=2, prompt_dropout=0.0)


def test_topk_larger_than_pool_is_refused():
    with pytest.raises(PromptConfigError, match="cannot select more prompts than the pool holds"):
        PromptConfig(method="tcpa", image_pool_size=4, image_topk=5)


def test_empty_pool_with_tcpa_is_refused():
    with pytest.raises(PromptConfigError, match="cls_pool_size must be >= 1"):
        PromptConfig(method="tcpa", cls_pool_size=0)


def test_unknown_method_is_refused():
    with pytest.raises(PromptConfigError, match="Unknown method"):
        PromptConfig(method="vpt")


@pytest.mark.parametrize("bad, match", [
    (torch.randn(2, 3, 40, 40), "takes 32x32 images, got 40x40"),
    (torch.randn(2, 1, 32, 32), "3-channel images, got 1 channels"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "normalised float images"),
    (torch.randn(3, 32, 32), "batch dimension"),
])
def test_wrong_input_is_a_named_error(bad, match):
    model = build_model(tiny_vit("plain"), PromptConfig(method="tcpa", **POOLS))
    with pytest.raises(InputShapeError, match=match):
        model(bad)


def test_non_vit_models_are_refused():
    with pytest.raises(UnsupportedModelError, match="needs a timm VisionTransformer"):
        build_model(timm.create_model("resnet18", pretrained=False, num_classes=3), PromptConfig())
    with pytest.raises(UnsupportedModelError, match="timm knows no model"):
        build_model("vit_does_not_exist", PromptConfig(), num_classes=3)


def test_dynamic_image_size_backbone_takes_other_sizes():
    vit = tiny_vit("plain", dynamic_img_size=True)
    model = build_model(vit, PromptConfig(method="tcpa", **POOLS)).eval()
    with capture(model, names=["attn"]) as cache:
        logits = model(torch.randn(2, 3, 48, 24))
    assert logits.shape == (2, 5)
    assert cache.layout.grid_size == (6, 3)
    assert cache["attn", 0].shape[-2:] == (cache.layout.num_queries, cache.layout.num_keys)
    with pytest.raises(InputShapeError, match="not a multiple of the patch size"):
        model(torch.randn(2, 3, 30, 24))


def test_cache_names_and_shapes_follow_the_layout():
    model = build_model(tiny_vit("registers"), PromptConfig(method="tcpa", prompt_length=2, **POOLS)).eval()
    images = images_for(model.backbone)
    with capture(model) as cache:
        model(images)
    layout = cache.layout
    b, heads = len(images), model.backbone.blocks[0].attn.num_heads
    assert layout.num_prefix == 4 and layout.grid_size == (4, 4)
    assert layout.num_cls_prompt_keys == 12 and layout.num_image_prompt_keys == 10
    for layer in (0, 1, -1):
        assert cache["attn", layer].shape == (b, heads, 20, 4 + 22 + 16)
        assert cache["attn_raw", layer].shape == cache["attn", layer].shape
        assert cache["mask", layer].dtype == torch.bool
        assert cache["cls_assign", layer].shape == (b, 3)
        assert cache["image_assign", layer].shape == (b, 16, 2)
    assert cache["features"].shape == (b, 64)
    assert cache.layers("attn") == [0, 1]
    with pytest.raises(KeyError, match="was not recorded"):
        cache["rollout", 0]


def test_selected_layers_and_float16_storage():
    model = build_model(tiny_vit("plain"), PromptConfig(method="tcpa", **POOLS)).eval()
    images = images_for(model.backbone)
    with capture(model, layers=[-1], names=["attn", "image_assign"], dtype=torch.float16) as cache:
        model(images)
    assert cache.layers("attn") == [1] and cache.layers("image_assign") == [1]
    assert cache["attn", 1].dtype == torch.float16
    assert cache["image_assign", 1].dtype == torch.int64
    assert ("attn", 0) not in cache and "features" not in cache


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_even_when_the_forward_fails():
    model = build_model(tiny_vit("plain"), PromptConfig(method="tcpa", **POOLS))
    with pytest.raises(InputShapeError):
        with capture(model):
            assert _hook_count(model) > 0
            model(torch.randn(1, 3, 8, 8))
    assert _hook_count(model) == 0


def test_hundred_capture_loops_leak_no_memory_and_no_hooks():
    model = build_model(tiny_vit("plain"), PromptConfig(method="tcpa", **POOLS)).eval()
    images = images_for(model.backbone)

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # is_tensor on deprecated torch aliases
            return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))

    def loop(n: int) -> None:
        for _ in range(n):
            with torch.no_grad(), capture(model) as cache:
                model(images)
            assert len(cache) > 0

    loop(2)
    before = live_tensors()
    loop(100)
    assert live_tensors() == before
    assert _hook_count(model) == 0
