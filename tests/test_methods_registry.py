"""The method registry: every registered method end to end, and a new method added from this file alone."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from conftest import images_for, tiny_vit
from safetensors.torch import save_file
from torch import nn

import tcpa_core
from tcpa_core import PromptConfig, PromptConfigError, build_model, capture, load_checkpoint, save_checkpoint
from tcpa_core.capture import ALL_NAMES
from tcpa_core.methods import PromptMethod, get_method, list_methods, register_method, unregister_method

SMALL = dict(cls_pool_size=4, image_pool_size=5, cls_topk=2, image_topk=2, num_prompts=3, prompt_dropout=0.0)
BUILT_IN = ("none", "vpt-shallow", "vpt-deep", "vfpt", "vp", "tcpa", "r-tcpa", "vfpt+tcpa", "vp+tcpa")


def test_registry_lists_the_built_in_methods_in_order_with_roles():
    assert tuple(list_methods()) == BUILT_IN == tcpa_core.METHODS
    assert list_methods(role="tcpa") == ["tcpa", "r-tcpa", "vfpt+tcpa", "vp+tcpa"]
    assert list_methods(role="baseline") == ["none", "vpt-shallow", "vpt-deep", "vfpt", "vp"]
    assert [get_method(m).display_name for m in BUILT_IN] == [
        "Linear probe", "VPT-shallow", "VPT-deep", "VFPT", "VP", "TCPA", "R-TCPA", "VFPT+TCPA", "VP+TCPA"]
    assert [m for m in BUILT_IN if get_method(m).token_matching] == ["tcpa", "vfpt+tcpa", "vp+tcpa"]
    assert [m for m in BUILT_IN if get_method(m).has_pools] == list_methods(role="tcpa")
    with pytest.raises(PromptConfigError, match="Unknown method 'vpt'; choose one of none, vpt-shallow"):
        get_method("vpt")
    with pytest.raises(PromptConfigError, match="role must be one of"):
        list_methods(role="TCPA")


@pytest.mark.parametrize("given, name, fields", [
    (dict(method="tcpa", fourier=True), "vfpt+tcpa", dict(fourier=True)),
    (dict(method="vfpt+tcpa"), "vfpt+tcpa", dict(fourier=True)),
    (dict(method="tcpa", input_prompt="pad"), "vp+tcpa", dict(input_prompt="pad")),
    (dict(method="vp+tcpa"), "vp+tcpa", dict(input_prompt=None)),
    (dict(method="tcpa"), "tcpa", dict(fourier=False)),
    (dict(method="r-tcpa", fourier=True), "r-tcpa", dict(fourier=True)),
])
def test_config_spec_resolves_combinations(given, name, fields):
    cfg = PromptConfig(**given)
    assert cfg.spec.name == name and cfg.display_name == get_method(name).display_name
    for key, value in fields.items():
        assert getattr(cfg, key) == value


@pytest.mark.parametrize("combined, spelled_out", [
    ("vfpt+tcpa", dict(method="tcpa", fourier=True)),
    ("vp+tcpa", dict(method="tcpa", input_prompt="pad", pad_size=3)),
])
def test_combined_methods_equal_their_spelled_out_configs(combined, spelled_out):
    vit = tiny_vit("registers")
    images = images_for(vit)
    extra = {"pad_size": 3} if combined == "vp+tcpa" else {}
    torch.manual_seed(0)
    a = build_model(copy.deepcopy(vit), PromptConfig(method=combined, **SMALL, **extra)).eval()
    b = build_model(copy.deepcopy(vit), PromptConfig(**{**SMALL, **spelled_out})).eval()
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    b.load_trainable_state_dict(a.trainable_state_dict())
    with torch.no_grad():
        assert torch.equal(a(images), b(images))


def _make(method: str, variant: str = "registers") -> tuple[nn.Module, torch.Tensor]:
    vit = tiny_vit(variant, num_classes=0)
    torch.manual_seed(1)
    model = build_model(vit, PromptConfig(method=method, **SMALL), num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval(), images_for(vit)


@pytest.mark.parametrize("method", list_methods())
def test_every_method_forward_capture_checkpoint_and_one_training_step(method, tmp_path):
    model, images = _make(method)
    spec = get_method(method)
    assert model.spec is model.config.spec
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (len(images), 3)
        stream = model.embed(images)
        half, _ = model.run_blocks(stream, 0, 1)
        torch.testing.assert_close(model.head_from_tokens(model.run_blocks(half, 1)[0]), logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.logits_from(stream), logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.logits_from(half, -1), logits, atol=1e-5, rtol=0)
        with capture(model, names=ALL_NAMES) as cache:
            captured = model(images)
    torch.testing.assert_close(captured, logits, atol=1e-5, rtol=0)
    layout = cache.layout
    for layer in range(model.depth):
        assert cache["attn", layer].shape[-2:] == (layout.num_queries, layout.num_keys)
        assert cache["mask", layer].shape == (len(images), layout.num_queries, layout.num_keys)
        assert (("image_assign", layer) in cache) == spec.token_matching
        assert (("sim", layer) in cache) == spec.token_matching
        assert (("prompt_columns", layer) in cache) == spec.has_pools
        assert ("resid_pre", layer) in cache
    fired = {k[0] for k in cache.keys() if isinstance(k, tuple)}
    assert fired == set(spec.hook_names()), "hook_names() must list exactly what the method computes"
    torch.testing.assert_close(cache["features"], model.forward_features(images), atol=1e-5, rtol=0)

    save_checkpoint(model, tmp_path / "run")
    loaded = load_checkpoint(tmp_path / "run", backbone=tiny_vit("registers", num_classes=0))
    assert loaded.config == model.config and loaded.spec.name == model.spec.name
    with torch.no_grad():
        assert torch.equal(loaded(images), logits)

    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    backbone = copy.deepcopy(model.backbone.state_dict())
    optimizer = torch.optim.SGD(params.values(), lr=0.5)
    out, pool_loss = model(images, return_pool_loss=True)
    (F.cross_entropy(out, torch.tensor([0, 1, 2])) + 0.01 * pool_loss).backward()
    optimizer.step()
    changed = [n for n, p in params.items() if not torch.equal(p, before[n])]
    assert set(changed) == set(params), f"not trained: {set(params) - set(changed)}"
    assert all(torch.equal(v, backbone[k]) for k, v in model.backbone.state_dict().items())


# ------------------------------------------------------------------------------------------ a new method
class TokenBias(nn.Module):
    """One learnable vector per block, added to every token of the block input."""

    def __init__(self, depth: int, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(0.02 * torch.randn(depth, dim))


class TokenBiasMethod(PromptMethod):
    name: ClassVar[str] = "test-token-bias"
    display_name: ClassVar[str] = "Token bias"
    description: ClassVar[str] = "a learnable vector per block added to every token"

    def build_prompts(self, config, depth, dim, patch_size):
        return TokenBias(depth, dim)

    def run_block(self, model, layer, x):
        x = model.hooks[layer].resid_pre(x) + model.prompts.bias[layer]
        return self.sequence_block(model, layer, x, 0), x.new_zeros(())


@pytest.fixture
def token_bias():
    register_method(TokenBiasMethod)
    try:
        yield get_method("test-token-bias")
    finally:
        unregister_method("test-token-bias")


def test_registering_twice_or_badly_is_refused(token_bias):
    with pytest.raises(PromptConfigError, match="already registered"):
        register_method(TokenBiasMethod)
    with pytest.raises(PromptConfigError, match="PromptMethod subclass"):
        register_method(object)  # type: ignore[arg-type]


TINY64 = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)


def _checkpoint(method: str, weights: Path, out: Path, seed: int) -> Path:
    torch.manual_seed(0)
    backbone = tcpa_core.backbone.tcpa_demo_vit(pretrained=False, **TINY64)
    if not weights.exists():
        save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    cfg = PromptConfig(method=method, **SMALL)
    torch.manual_seed(seed)
    model = build_model(backbone, cfg, num_classes=10)
    meta = {"dataset": {"name": "digits", "seed": 0, "val_fraction": 0.1, "max_samples": 40}}
    save_checkpoint(model, out, meta, backbone_source={"name": "tcpa_demo_vit", "weights": str(weights),
                                                       "kwargs": TINY64})
    return out


@pytest.mark.slow
def test_a_method_registered_here_runs_through_the_library_and_figure_1(token_bias, tmp_path, monkeypatch):
    model, images = _make("test-token-bias")
    assert model.config.display_name == "Token bias" and model.prompts.bias.requires_grad
    with torch.no_grad():
        logits = model(images)
        with capture(model) as cache:
            torch.testing.assert_close(model(images), logits, atol=1e-5, rtol=0)
        with tcpa_core.intervene(model, hooks={("resid_pre", 0): lambda v, layer: v * 0}):
            assert not torch.equal(model(images), logits)
    assert cache["attn", -1].shape[-1] == cache.layout.num_keys
    save_checkpoint(model, tmp_path / "bias")
    loaded = load_checkpoint(tmp_path / "bias", backbone=tiny_vit("registers", num_classes=0))
    assert loaded.config.method == "test-token-bias"
    with torch.no_grad():
        assert torch.equal(loaded(images), logits)

    weights = tmp_path / "backbone.safetensors"
    base = _checkpoint("test-token-bias", weights, tmp_path / "base", seed=1)
    tcpa = _checkpoint("tcpa", weights, tmp_path / "tcpa", seed=2)
    from tcpa_viz.cli import main

    monkeypatch.setattr(sys, "argv", ["tcpa-viz"])
    code = main(["figure", "1", "--baseline", str(base), "--tcpa", str(tcpa), "--out", str(tmp_path / "fig"),
                 "--demo-dir", str(tmp_path / "no_demo")])
    assert code == 0
    written = sorted(p.suffix for p in (tmp_path / "fig").iterdir())
    assert ".png" in written and ".html" in written
