"""The library boundary: every bad argument of PromptConfig, build_model, the forward and capture ends in a
named TCPAError subclass whose message says what to do; good but unusual arguments are accepted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import images_for, tiny_vit

from tcpa_core import (
    BackboneArgumentError,
    CaptureError,
    InputShapeError,
    PromptConfig,
    PromptConfigError,
    TCPAError,
    UnsupportedModelError,
    build_model,
    capture,
)

POOLS = dict(cls_pool_size=6, image_pool_size=5, cls_topk=3, image_topk=2, prompt_dropout=0.0)

BAD_CONFIGS = [
    (dict(cls_pool_size=True), "cls_pool_size must be an integer"),
    (dict(cls_pool_size="18"), r"convert it with int\('18'\)"),
    (dict(method="vpt-deep", image_pool_size=-1), "image_pool_size must be >= 0"),
    (dict(num_prompts=2.5), "num_prompts must be an integer"),
    (dict(method="vpt-deep", num_prompts=0), "needs num_prompts >= 1"),
    (dict(prompt_length=0), "prompt_length must be >= 1"),
    (dict(prompt_dropout=float("nan")), "prompt_dropout must be a finite number"),
    (dict(prompt_dropout=1.0), r"prompt_dropout must be in \[0, 1\)"),
    (dict(prompt_dropout="0.1"), "prompt_dropout must be a number"),
    (dict(method="vfpt", fourier_fraction=float("nan")), "fourier_fraction must be a finite number"),
    (dict(fourier_fraction=1.5), r"fourier_fraction must be in \[0, 1\]"),
    (dict(fourier="yes"), "fourier must be True or False"),
    (dict(fourier=1), "fourier must be True or False"),
    (dict(input_prompt="frame"), "Unknown input_prompt 'frame'"),
    (dict(method=3), "method must be a string"),
    (dict(method="TCPA"), "Unknown method 'TCPA'; choose one of"),
    (dict(pad_size=0), "pad_size must be >= 1"),
    (dict(cls_topk=0), "cls_topk=0 must be between 1 and cls_pool_size"),
    (dict(foo=1), "PromptConfig has no field 'foo'"),
    (dict(cls_pool=3), "did you mean 'cls_pool_size'"),
]


@pytest.mark.parametrize("kwargs, match", BAD_CONFIGS)
def test_bad_prompt_configs_are_named_errors(kwargs, match):
    with pytest.raises(PromptConfigError, match=match):
        PromptConfig(**kwargs)


def test_too_many_positional_arguments_and_bad_dicts():
    with pytest.raises(PromptConfigError, match="positional arguments"):
        PromptConfig(*(["tcpa"] + [1] * 12))
    with pytest.raises(PromptConfigError, match="must be a JSON object"):
        PromptConfig.from_dict(["tcpa"])  # type: ignore[arg-type]


def test_numpy_integers_and_floats_are_accepted_and_stored_as_python_numbers():
    cfg = PromptConfig(cls_pool_size=np.int64(12), image_topk=np.int32(2), prompt_dropout=np.float32(0.25))
    assert type(cfg.cls_pool_size) is int and type(cfg.prompt_dropout) is float
    assert json.loads(json.dumps(cfg.to_dict()))["cls_pool_size"] == 12


def _vit():
    return tiny_vit("plain")


BAD_BUILDS = [
    (lambda: build_model(_vit(), PromptConfig(), num_classes=True), PromptConfigError, "num_classes must be a"),
    (lambda: build_model(_vit(), PromptConfig(), num_classes=0), PromptConfigError, "num_classes must be >= 1"),
    (lambda: build_model(_vit(), PromptConfig(), num_classes="10"), PromptConfigError, "num_classes must be a"),
    (lambda: build_model(_vit(), {"method": "tcpa"}), PromptConfigError, "config must be a PromptConfig"),
    (lambda: build_model("vit_tiny_patch16_224", num_classes=3, pretrained="no"), PromptConfigError,
     "pretrained must be True or False"),
    (lambda: build_model(_vit(), checkpoint=3), PromptConfigError, "checkpoint must be the path"),
    (lambda: build_model(3, PromptConfig()), UnsupportedModelError, "model must be a timm model name"),
    (lambda: build_model("", PromptConfig(), num_classes=3), UnsupportedModelError, "empty name"),
    (lambda: build_model(_vit(), PromptConfig(), img_size=32), UnsupportedModelError, "only apply when the model"),
    (lambda: build_model("vit_tiny_patch16_224", PromptConfig(), num_classes=3, img_sizee=32),
     BackboneArgumentError, "timm rejected the backbone arguments"),
    (lambda: build_model("vit_tiny_patch16_224", PromptConfig(), num_classes=3, depth="two"),
     BackboneArgumentError, "timm rejected"),
    (lambda: build_model(_vit(), PromptConfig(method="vp", pad_size=16)), PromptConfigError,
     "pad_size 16 does not fit"),
    (lambda: build_model(tiny_vit("plain", num_classes=0), PromptConfig()), PromptConfigError,
     "num_classes must be given"),
]


@pytest.mark.parametrize("call, error, match", BAD_BUILDS)
def test_bad_build_model_arguments_are_named_errors(call, error, match):
    with pytest.raises(error, match=match) as info:
        call()
    assert isinstance(info.value, TCPAError)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_inputs_of_another_float_dtype_are_cast_to_the_backbone_dtype(dtype):
    model = build_model(_vit(), PromptConfig(method="tcpa", **POOLS)).eval()
    images = images_for(model.backbone)
    with torch.no_grad():
        expected = model(images.to(dtype).float())
        got = model(images.to(dtype))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(0, 3, 32, 32), "empty batch"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.complex64), "normalised float images"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.bool), "normalised float images"),
    (np.zeros((2, 3, 32, 32), dtype=np.float32), "float tensor"),
])
def test_unusable_inputs_are_refused_by_name(bad, match):
    model = build_model(_vit(), PromptConfig(method="tcpa", **POOLS)).eval()
    with pytest.raises(InputShapeError, match=match):
        model(bad)


# ------------------------------------------------------------------------------------------ capture
def _tcpa():
    model = build_model(_vit(), PromptConfig(method="tcpa", **POOLS)).eval()
    return model, images_for(model.backbone)


@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=[2]), "block 2 is out of range for a model with 2 blocks"),
    (dict(layers=-3), "block -3 is out of range"),
    (dict(layers=["0"]), "integer block indices, got str"),
    (dict(layers=[0.0]), "integer block indices, got float"),
    (dict(layers=[True]), "integer block indices, got bool"),
    (dict(layers="01"), "a block index or a list of them"),
    (dict(layers=object()), "an iterable of them"),
    (dict(names=["atn"]), r"unknown capture names \['atn'\]"),
    (dict(names=[1]), "names must be strings"),
    (dict(names=5), "names must be a name or an iterable"),
    (dict(dtype=torch.int8), "must be a floating torch dtype"),
    (dict(dtype="float16"), "must be a floating torch dtype"),
    (dict(device="gpu"), "cannot store recorded tensors on device 'gpu'"),
    (dict(device=0.5), "device must be a string"),
])
def test_bad_capture_arguments_are_capture_errors_before_anything_is_hooked(kwargs, match):
    model, _ = _tcpa()
    with pytest.raises(CaptureError, match=match) as info:
        with capture(model, **kwargs):
            pass
    assert isinstance(info.value, ValueError), "old `except ValueError` callers keep working"
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_capture_on_a_missing_gpu_is_refused():
    model, _ = _tcpa()
    with pytest.raises(CaptureError, match="cuda"):
        with capture(model, device="cuda:0"):
            pass


def test_capture_needs_a_prompted_vit():
    with pytest.raises(UnsupportedModelError, match="capture needs a PromptedViT"):
        with capture(tiny_vit("plain")):
            pass


@pytest.mark.parametrize("layers", [
    (x for x in [0, -1]), (0, 1), np.array([0, 1]), [np.int64(0), np.int32(-1)], torch.tensor([0, 1]), range(2),
])
def test_capture_takes_any_iterable_of_layers(layers):
    model, images = _tcpa()
    with torch.no_grad(), capture(model, layers=layers, names=["attn"]) as cache:
        model(images)
    assert cache.layers("attn") == [0, 1]


def test_a_single_layer_and_a_single_name():
    model, images = _tcpa()
    with torch.no_grad(), capture(model, layers=np.int64(-1), names="attn", dtype=torch.bfloat16,
                                  device=torch.device("cpu")) as cache:
        model(images)
    assert cache.keys() == [("attn", 1)] and cache["attn", -1].dtype == torch.bfloat16
