"""Backbone weight files (.pth/.safetensors/.npz), fingerprints, prompt checkpoints and atomic writes."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import images_for, tiny_vit
from safetensors.torch import save_file

from tcpa_core import BackboneMismatchError, CheckpointError, PromptConfig
from tcpa_core import checkpoint as ckpt
from tcpa_core.model import build_model
from tcpa_core.weights_io import backbone_fingerprint, load_backbone_weights

POOLS = dict(method="tcpa", cls_pool_size=4, image_pool_size=5, cls_topk=2, image_topk=3, prompt_dropout=0.0)


def _backbone_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa = {k: v for k, v in a.state_dict().items() if not k.startswith("head.")}
    sb = {k: v for k, v in b.state_dict().items() if not k.startswith("head.")}
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _big_vision_npz(vit: torch.nn.Module, path: Path) -> None:
    """Write ``vit`` in the Google JAX ViT naming that timm's ``_load_weights`` reads."""
    sd = {k: v.detach().numpy() for k, v in vit.state_dict().items()}
    dim, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
    hd = dim // heads
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": np.zeros((dim, 7), np.float32),
        "head/bias": np.zeros(7, np.float32),
    }
    for i in range(len(vit.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            w[mha + f"{name}/kernel"] = qkv_w[j * dim:(j + 1) * dim].T.reshape(dim, heads, hd)
            w[mha + f"{name}/bias"] = qkv_b[j * dim:(j + 1) * dim].reshape(heads, hd)
        w[mha + "out/kernel"] = sd[b + "attn.proj.weight"].reshape(dim, heads, hd).transpose(1, 2, 0)
        w[mha + "out/bias"] = sd[b + "attn.proj.bias"]
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[p + f"{ln}/scale"], w[p + f"{ln}/bias"] = sd[b + f"{norm}.weight"], sd[b + f"{norm}.bias"]
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **{k: np.ascontiguousarray(v) for k, v in w.items()})


# ------------------------------------------------------------------------------------------ weights_io
def test_pth_with_wrapper_and_module_prefix_loads_and_ignores_head(tmp_path):
    src = tiny_vit(seed=1, num_classes=7)
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = tiny_vit(seed=2, num_classes=0)
    assert not _backbone_equal(src, dst)
    ignored = load_backbone_weights(dst, path)
    assert _backbone_equal(src, dst)
    assert ignored == ["head.bias", "head.weight"]


def test_safetensors_loads(tmp_path):
    src = tiny_vit(seed=3)
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    dst = tiny_vit(seed=4, num_classes=0)
    load_backbone_weights(dst, tmp_path / "w.safetensors")
    assert _backbone_equal(src, dst)
    assert backbone_fingerprint(src) == backbone_fingerprint(dst)


def test_flat_npz_with_timm_names_loads(tmp_path):
    src = tiny_vit(seed=7)
    np.savez(tmp_path / "flat.npz", **{k: v.numpy() for k, v in src.state_dict().items()})
    dst = tiny_vit(seed=8, num_classes=0)
    load_backbone_weights(dst, tmp_path / "flat.npz")
    assert _backbone_equal(src, dst)


def test_big_vision_npz_loads_and_gives_the_same_features(tmp_path):
    src = tiny_vit(seed=5)
    _big_vision_npz(src, tmp_path / "w.npz")
    dst = tiny_vit(seed=6, num_classes=0)
    load_backbone_weights(dst, tmp_path / "w.npz")
    for name, value in src.state_dict().items():
        if not name.startswith("head."):
            torch.testing.assert_close(dst.state_dict()[name], value, rtol=0, atol=0, msg=name)
    x = images_for(src)
    torch.testing.assert_close(dst.forward_features(x), src.forward_features(x))


def test_npz_of_a_deeper_model_is_a_backbone_mismatch(tmp_path):
    _big_vision_npz(tiny_vit(seed=5, depth=3), tmp_path / "deep.npz")
    target = tiny_vit(seed=6, num_classes=0)
    before = backbone_fingerprint(target)
    with pytest.raises(BackboneMismatchError, match="3 transformer blocks but the backbone has 2"):
        load_backbone_weights(target, tmp_path / "deep.npz")
    assert backbone_fingerprint(target) == before


def test_wrong_width_is_a_backbone_mismatch_and_leaves_the_backbone_untouched(tmp_path):
    torch.save(tiny_vit(seed=1, embed_dim=32).state_dict(), tmp_path / "small.pth")
    target = tiny_vit(seed=2, num_classes=0)
    before = backbone_fingerprint(target)
    with pytest.raises(BackboneMismatchError, match=r"shape mismatch.*file \[32\] vs backbone \[64\]"):
        load_backbone_weights(target, tmp_path / "small.pth")
    assert backbone_fingerprint(target) == before


def test_missing_blocks_are_a_backbone_mismatch(tmp_path):
    save_file(tiny_vit(seed=1).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(BackboneMismatchError, match="missing from the file.*blocks.2"):
        load_backbone_weights(tiny_vit(seed=2, depth=3), tmp_path / "w.safetensors")


class _Payload:
    """Unpickling this object would create a directory (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_pth_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": tiny_vit().state_dict(), "extra": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_backbone_weights(tiny_vit(num_classes=0), tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_truncated_weight_files_raise_checkpoint_error(tmp_path, suffix):
    src = tiny_vit(seed=1)
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save(src.state_dict(), full)
    elif suffix == ".safetensors":
        save_file(src.state_dict(), full)
    else:
        _big_vision_npz(src, full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated") as info:
        load_backbone_weights(tiny_vit(num_classes=0), cut)
    assert not isinstance(info.value, BackboneMismatchError)


def test_missing_or_unsupported_weight_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth does not exist"):
        load_backbone_weights(tiny_vit(), tmp_path / "nope.pth")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="Unsupported backbone weight file"):
        load_backbone_weights(tiny_vit(), tmp_path / "w.h5")


def test_fingerprint_is_stable_ignores_the_head_and_sees_one_ulp():
    a = tiny_vit(seed=0, num_classes=5)
    b = copy.deepcopy(a)
    b.reset_classifier(0)
    assert backbone_fingerprint(a) == backbone_fingerprint(a) == backbone_fingerprint(b)
    assert len(backbone_fingerprint(a)) == 64
    with torch.no_grad():
        w = b.blocks[1].mlp.fc2.bias
        w[0] = torch.nextafter(w[0], torch.tensor(1.0))
    assert backbone_fingerprint(a) != backbone_fingerprint(b)


# ------------------------------------------------------------------------------------------ checkpoints
def _trained_like_model(seed: int = 0, backbone_seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_vit(seed=backbone_seed, num_classes=0), PromptConfig(**POOLS), num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_checkpoint_roundtrip_restores_logits_and_metadata(tmp_path):
    model = _trained_like_model()
    path = ckpt.save_checkpoint(model, tmp_path / "run", {"class_names": ["a", "b", "c"], "metrics": {"acc": 0.5}})
    assert path == tmp_path / "run" / "model.safetensors"
    loaded = ckpt.load_checkpoint(tmp_path / "run", backbone=tiny_vit(seed=0, num_classes=0))
    x = images_for(loaded.backbone, batch=2)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    meta = loaded.checkpoint_meta
    assert meta["class_names"] == ["a", "b", "c"] and meta["metrics"] == {"acc": 0.5}
    assert meta["prompt_config"] == model.config.to_dict() and meta["num_classes"] == 3
    assert meta["backbone"]["fingerprint"] == backbone_fingerprint(model.backbone)
    on_disk = json.loads((tmp_path / "run" / "config.json").read_text())
    assert on_disk == meta == ckpt.read_checkpoint_meta(tmp_path / "run")
    tensors, _ = ckpt.read_checkpoint(tmp_path / "run" / "model.safetensors")
    assert set(tensors) == set(model.trainable_state_dict())
    assert not any(k.startswith("backbone.") for k in tensors)


def test_checkpoint_as_a_named_file(tmp_path):
    model = _trained_like_model()
    ckpt.save_checkpoint(model, tmp_path / "tcpa.safetensors")
    assert (tmp_path / "tcpa.json").is_file()
    loaded = ckpt.load_checkpoint(tmp_path / "tcpa.json", backbone=tiny_vit(seed=0, num_classes=0))
    assert loaded.config == model.config


def test_checkpoint_on_another_backbone_is_refused(tmp_path):
    ckpt.save_checkpoint(_trained_like_model(backbone_seed=0), tmp_path / "run")
    with pytest.raises(BackboneMismatchError, match=r"was trained on backbone .* you gave .*pass --backbone"):
        ckpt.load_checkpoint(tmp_path / "run", backbone=tiny_vit(seed=1, num_classes=0))


def test_checkpoint_of_a_custom_backbone_needs_the_module(tmp_path):
    ckpt.save_checkpoint(_trained_like_model(), tmp_path / "run")
    with pytest.raises(BackboneMismatchError, match="custom backbone"):
        ckpt.load_checkpoint(tmp_path / "run")


def test_corrupt_truncated_and_missing_checkpoints(tmp_path):
    ckpt.save_checkpoint(_trained_like_model(), tmp_path / "run")
    weights = tmp_path / "run" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ckpt.load_checkpoint(tmp_path / "run", backbone=tiny_vit(num_classes=0))
    weights.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ckpt.load_checkpoint(tmp_path / "run", backbone=tiny_vit(num_classes=0))
    with pytest.raises(CheckpointError, match=r"No checkpoint at .*elsewhere"):
        ckpt.load_checkpoint(tmp_path / "elsewhere")
    save_file({"x": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not a tcpa-viz checkpoint"):
        ckpt.load_checkpoint(tmp_path / "plain.safetensors")


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    first = _trained_like_model(seed=0)
    ckpt.save_checkpoint(first, tmp_path / "run", {"epoch": 1})
    before = (tmp_path / "run" / "model.safetensors").read_bytes()

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(_trained_like_model(seed=1), tmp_path / "run", {"epoch": 2})
    monkeypatch.undo()
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ckpt.load_checkpoint(tmp_path / "run", backbone=tiny_vit(seed=0, num_classes=0))
    assert loaded.checkpoint_meta["epoch"] == 1
    for name, value in first.trainable_state_dict().items():
        assert torch.equal(loaded.trainable_state_dict()[name], value)


def test_atomic_write_interrupted_mid_file(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old contents")

    def half_then_die(handle) -> None:
        handle.write(b"new con")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(target, half_then_die)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_training_state_roundtrip_and_refuses_objects(tmp_path):
    state = {"epoch": 2, "w": torch.arange(3.0), "history": [{"loss": 0.5}], "best": {"epoch": None}}
    ckpt.save_training_state(tmp_path / "s.pt", state)
    back = ckpt.load_training_state(tmp_path / "s.pt")
    assert back["epoch"] == 2 and torch.equal(back["w"], state["w"]) and back["history"] == state["history"]
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "x": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="arbitrary pickled objects"):
        ckpt.load_training_state(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "cut.pt").write_bytes((tmp_path / "s.pt").read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ckpt.load_training_state(tmp_path / "cut.pt")
