"""The benchmark's dense-pattern implementation (benchmarks/dense_pattern.py) computes exactly what the TCPA
fast path computes, so the core benchmark's comparison cannot silently drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import images_for, tiny_vit

from tcpa_core import PromptConfig, build_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dense_pattern = _load("dense_pattern")


@pytest.mark.parametrize("method", ["tcpa", "r-tcpa"])
@pytest.mark.parametrize(("variant", "prompt_length", "fourier"),
                         [("plain", 1, False), ("plain", 2, True), ("registers", 1, False),
                          ("no_cls_token", 1, False), ("avg_pool_qk_norm", 2, False)])
def test_dense_pattern_equals_tcpa(method, variant, prompt_length, fourier):
    vit = tiny_vit(variant)
    torch.manual_seed(3)
    model = build_model(vit, PromptConfig(method=method, cls_pool_size=6, image_pool_size=5, cls_topk=3,
                                          image_topk=2, prompt_length=prompt_length, fourier=fourier,
                                          prompt_dropout=0.0)).eval()
    images = images_for(vit)
    with torch.no_grad():
        expected, expected_loss = model(images, return_pool_loss=True)
        logits, loss = dense_pattern.dense_pattern_forward(model, images)
    assert expected.abs().max() > 1e-3  # a real comparison, not of two zero tensors
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=0)
    if method == "tcpa":
        assert loss > 0


def test_dense_pattern_gradients_equal_tcpa():
    vit = tiny_vit("plain")
    model = build_model(vit, PromptConfig(cls_pool_size=6, image_pool_size=5, cls_topk=3, image_topk=2,
                                          prompt_dropout=0.0)).eval()
    images = images_for(vit)
    grads = []
    for forward in (lambda: model(images, return_pool_loss=True),
                    lambda: dense_pattern.dense_pattern_forward(model, images)):
        logits, loss = forward()
        (logits.square().sum() + loss).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad})
        model.zero_grad(set_to_none=True)
    assert set(grads[0]) == set(grads[1]) and grads[0]["prompts.image_prompts"].abs().max() > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_dense_mask_marks_exactly_the_selected_prompt_columns():
    vit = tiny_vit("plain")
    model = build_model(vit, PromptConfig(cls_pool_size=6, image_pool_size=5, cls_topk=3, image_topk=2)).eval()
    x = model.backbone._pos_embed(model.backbone.patch_embed(images_for(vit)))
    mask, _ = dense_pattern.dense_mask(model, 0, x)
    b, n = x.shape[:2]
    assert mask.shape == (b, 2, n, n + 11)
    prompt_cols = mask[..., 1:12]
    assert (prompt_cols[:, :, 0, :6].sum(-1) == 3).all() and (prompt_cols[:, :, 0, 6:] == 0).all()
    assert (prompt_cols[:, :, 1:, 6:].sum(-1) == 2).all() and (prompt_cols[:, :, 1:, :6] == 0).all()
    assert (mask[..., 0] == 1).all() and (mask[..., 12:] == 1).all()


def test_dense_pattern_refuses_other_methods():
    vit = tiny_vit("plain")
    with pytest.raises(ValueError, match="dense pattern"):
        dense_pattern.dense_pattern_forward(build_model(vit, PromptConfig(method="vpt-deep")), images_for(vit))
