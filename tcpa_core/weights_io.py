"""Loading local backbone weight files and fingerprinting a backbone.

Supported files:

* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``: ``torch.load(..., weights_only=True)`` (never arbitrary pickles);
  a bare state dict or one wrapped as ``{"model": ...}``, ``{"state_dict": ...}``, ``{"module": ...}``, ...
* ``.safetensors``.
* ``.npz``: Google JAX / big_vision ViT checkpoints (loaded by timm's converter), or a flat archive of
  arrays keyed by timm parameter names.

Foreign layouts timm knows (OpenAI CLIP, DINOv2, OpenCLIP trunks, a ``module.`` / ``backbone.`` prefix) are
converted with timm's ``checkpoint_filter_fn``, which also resamples position and patch embeddings to the
backbone's grid. The classifier head is never loaded. Anything else that does not fit the backbone
exactly raises :class:`BackboneMismatchError`.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import BackboneMismatchError, CheckpointError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SUPPORTED_SUFFIXES = (*TORCH_SUFFIXES, ".safetensors", ".npz")
HEAD_PREFIXES = ("head.", "head_dist.")
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "model_state", "net", "params")
_STRIP_PREFIXES = ("module.", "model.", "backbone.", "module.backbone.", "model.backbone.", "encoder.")
_JAX_ANCHORS = ("embedding/kernel", "opt/target/embedding/kernel", "params/embedding/kernel",
                "params/img/embedding/kernel")


def _is_head_key(key: str) -> bool:
    return key.startswith(HEAD_PREFIXES)


def backbone_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict without its classifier head (the part a prompt checkpoint depends on)."""
    return {k: v for k, v in backbone.state_dict().items() if not _is_head_key(k)}


def backbone_fingerprint(backbone: nn.Module) -> str:
    """A stable sha256 hex digest over the backbone's parameter/buffer names, dtypes, shapes and bytes.

    The classifier head is excluded, so a backbone fingerprints the same whatever head it carries.
    """
    digest = hashlib.sha256()
    state = backbone_state(backbone)
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    reason = str(exc).rstrip(". ")
    return CheckpointError(
        f"Could not read the weight file {path}: {type(exc).__name__}: {reason}. The file is corrupt, "
        "truncated or not in the format its extension says; re-download or re-export it."
    )


def torch_file_kind(path: str | Path) -> str | None:
    """``"zip"`` (torch.save since 1.6), ``"pickle"`` (the legacy format) or None when the file starts like
    neither (empty, text, HTML error page, another format): such files are not "pickled objects"."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    return None


def _read_torch(path: Path) -> Any:
    if torch_file_kind(path) is None:
        raise CheckpointError(
            f"Could not read the weight file {path}: it is not a file written by torch.save (it is empty, text or "
            "another format). Re-download or re-export it; .safetensors and .npz files need that extension."
        )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refused to load {path}: it contains pickled Python objects that are not plain tensors, and "
            "loading them could run arbitrary code (torch.load with weights_only=True rejected it). "
            "If you trust the file, re-save only its state dict (or convert it to .safetensors) and retry."
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError, AttributeError) as exc:
        raise _unreadable(path, exc) from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from exc


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensor state dict inside a loaded object (bare dict or a common wrapper)."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise CheckpointError(
        f"{path} holds no state dict of tensors (found {type(obj).__name__}"
        + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else "")
        + "). Save the backbone with torch.save(model.state_dict(), path) or safetensors."
    )


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix (``module.``, ``backbone.``, ...) when that makes the keys fit better."""
    best, best_hits = state, len(expected.intersection(state))
    for prefix in _STRIP_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(expected.intersection(stripped))
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _check_fit(state: Mapping[str, torch.Tensor], backbone: nn.Module, path: Path) -> None:
    expected = backbone_state(backbone)
    given = {k: v for k, v in state.items() if not _is_head_key(k)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [
        f"{k}: file {_shape(given[k])} vs backbone {_shape(expected[k])}"
        for k in sorted(set(given) & set(expected))
        if given[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {'; '.join(wrong[:3])}")
        if missing:
            parts.append(f"{len(missing)} backbone key(s) missing from the file, e.g. {missing[:4]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:4]}")
        raise BackboneMismatchError(
            f"The weight file {path} does not fit the backbone {type(backbone).__name__}"
            f" ({_describe(backbone)}): {'; '.join(parts)}. It was made for another architecture; pass "
            "--backbone with the architecture the file was saved from (e.g. a ViT-S/16 file needs "
            "vit_small_patch16_224, not vit_base_patch16_224)."
        )


def _describe(backbone: nn.Module) -> str:
    embed_dim = getattr(backbone, "embed_dim", None)
    blocks = getattr(backbone, "blocks", None)
    depth = len(blocks) if blocks is not None else None
    return f"width {embed_dim}, depth {depth}"


def _timm_filter(state: dict[str, torch.Tensor], backbone: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Convert foreign layouts and resample embeddings with timm's ViT checkpoint filter."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if not isinstance(backbone, VisionTransformer):
        return state
    try:
        return checkpoint_filter_fn(state, backbone)
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise BackboneMismatchError(
            f"The weight file {path} could not be converted to the backbone {_describe(backbone)}: {exc}. "
            "Pass --backbone with the architecture the file was saved from."
        ) from exc


def _load_state_dict(backbone: nn.Module, state: dict[str, torch.Tensor], path: Path) -> list[str]:
    expected = set(backbone_state(backbone))
    state = _strip_prefix(state, expected)
    state = _timm_filter(state, backbone, path)
    ignored = sorted(k for k in state if _is_head_key(k))
    state = {k: v for k, v in state.items() if not _is_head_key(k)}
    _check_fit(state, backbone, path)
    with torch.no_grad():
        backbone.load_state_dict(state, strict=False)
    return ignored


def _jax_depth(files: list[str], archive: np.lib.npyio.NpzFile) -> int | None:
    blocks = {int(m.group(1)) for f in files if (m := re.search(r"Transformer/encoderblock_(\d+)/", f))}
    if blocks:
        return max(blocks) + 1
    scanned = [f for f in files if f.endswith("Transformer/encoderblock/LayerNorm_0/scale")]
    if scanned:
        return int(archive[scanned[0]].shape[0])
    return None


def _load_npz(backbone: nn.Module, path: Path) -> list[str]:
    try:
        archive = np.load(str(path), allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path} is a single .npy array, not an .npz archive of named weights.")
    with archive:
        try:
            files = list(archive.files)
            if not any(f.endswith(_JAX_ANCHORS) for f in files):
                state = {k: torch.from_numpy(np.array(archive[k])) for k in files}
                return _load_state_dict(backbone, state, path)
            depth = _jax_depth(files, archive)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise _unreadable(path, exc) from exc
    return _load_jax_npz(backbone, path, depth)


def _load_jax_npz(backbone: nn.Module, path: Path, depth: int | None) -> list[str]:
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    if not isinstance(backbone, VisionTransformer):
        raise BackboneMismatchError(
            f"{path} is a JAX/big_vision ViT checkpoint; it can only be loaded into a timm VisionTransformer, "
            f"not {type(backbone).__name__}."
        )
    if depth is not None and depth != len(backbone.blocks):
        raise BackboneMismatchError(
            f"The JAX checkpoint {path} has {depth} transformer blocks but the backbone has "
            f"{len(backbone.blocks)} ({_describe(backbone)}). Pass --backbone with the architecture the file "
            "was saved from."
        )
    scratch = copy.deepcopy(backbone)
    try:
        _load_weights(scratch, str(path))
    except KeyError as exc:
        raise BackboneMismatchError(
            f"The JAX checkpoint {path} lacks the weight {exc} that the backbone ({_describe(backbone)}) needs; "
            "it was made for another architecture. Pass --backbone with the matching architecture."
        ) from exc
    except RuntimeError as exc:
        raise BackboneMismatchError(
            f"The JAX checkpoint {path} does not fit the backbone ({_describe(backbone)}): {exc}. Pass "
            "--backbone with the architecture the file was saved from."
        ) from exc
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _unreadable(path, exc) from exc
    with torch.no_grad():
        backbone.load_state_dict(backbone_state(scratch), strict=False)
    return []


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> list[str]:
    """Load a local weight file into ``backbone`` in place; the classifier head is never loaded.

    Returns the names of the head entries found in the file and ignored.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt, holds pickled objects, or has an
            unsupported extension.
        BackboneMismatchError: the file's keys or shapes do not fit the backbone.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"Backbone weight file {path} does not exist" + (" (it is a directory)" if path.is_dir() else "")
            + "; pass the path of a .pth/.pt/.safetensors/.npz file."
        )
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(backbone, path)
    if suffix == ".safetensors":
        state = _read_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        state = _unwrap(_read_torch(path), path)
    else:
        raise CheckpointError(
            f"Unsupported backbone weight file {path.name}: expected one of {', '.join(SUPPORTED_SUFFIXES)}."
        )
    if not state:
        raise CheckpointError(f"The weight file {path} holds no tensors.")
    return _load_state_dict(backbone, state, path)


__all__ = ["SUPPORTED_SUFFIXES", "backbone_fingerprint", "backbone_state", "load_backbone_weights"]
