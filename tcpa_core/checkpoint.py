"""Prompt checkpoints: only what was trained, plus what is needed to rebuild the model.

On disk a checkpoint is a directory (or a ``NAME.safetensors`` file with a ``NAME.json`` beside it):

* ``model.safetensors``: the trainable tensors (prompt pools/tokens, input prompt, head), named as in
  ``PromptedViT.trainable_state_dict()``. Its header metadata holds the full JSON description under the
  key ``tcpa_meta``, so the file alone is self-contained.
* ``config.json``: the same JSON, for people and tools (the loader trusts the copy in the safetensors file).

The JSON holds the ``PromptConfig``, the backbone (timm name, sha256 fingerprint of its weights, where the
weights came from, timm kwargs), ``num_classes``, class names when known, metrics and library versions.
Every file is written atomically (temporary file in the same directory, fsync, ``os.replace``).

Training state for resuming (optimizer, scheduler, counters, history) lives in a separate file written with
:func:`save_training_state` and read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .backbone import DEMO_BACKBONE
from .config import PromptConfig
from .errors import BackboneMismatchError, CheckpointError, TCPAError, UnsupportedModelError
from .weights_io import backbone_fingerprint, torch_file_kind

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .model import PromptedViT

FORMAT = "tcpa-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "config.json"
META_KEY = "tcpa_meta"
_RESERVED = ("format", "format_version", "prompt_config", "backbone", "num_classes", "trainable_keys")


# ------------------------------------------------------------------------------------------ atomic io
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` atomically: ``write(fileobj)`` fills a temporary file in the same directory,
    which is flushed, fsynced and then renamed over ``path``. On any error the old file is untouched and
    the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint JSON")


# ------------------------------------------------------------------------------------------ paths
def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """``(weights, json)`` paths of the checkpoint at ``path`` (a directory, its .safetensors or its .json)."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.is_file() and path.suffix != ".json":
        kind = "a PyTorch weight file" if path.suffix in (".pth", ".pt", ".bin", ".ckpt", ".npz") else "a file"
        raise CheckpointError(
            f"{path} is {kind}, not a tcpa-viz prompt checkpoint (a folder with {WEIGHTS_FILE} and {META_FILE}, "
            "or a .safetensors file written by save_checkpoint). Backbone weight files go to --checkpoint FILE; "
            "--model takes the folder written by `tcpa-viz train`."
        )
    if path.suffix == ".json":
        if path.name == META_FILE:
            return path.parent / WEIGHTS_FILE, path
        return path.with_suffix(".safetensors"), path
    return path / WEIGHTS_FILE, path / META_FILE


def _versions() -> dict[str, str]:
    import timm

    versions = {"torch": torch.__version__, "timm": timm.__version__}
    with contextlib.suppress(PackageNotFoundError):
        versions["tcpa-viz"] = version("tcpa-viz")
    versions.setdefault("tcpa-viz", "unknown")
    return versions


def describe_backbone(model: nn.Module, source: Mapping[str, Any] | None = None,
                      fingerprint: str | None = None) -> dict[str, Any]:
    """The ``backbone`` entry of a checkpoint's JSON: name, fingerprint and where the weights came from.

    ``source`` may give ``pretrained`` (timm hub weights), ``weights`` (a local weight file) and
    ``kwargs`` (extra ``timm.create_model`` arguments) so that :func:`load_checkpoint` can rebuild it.
    ``fingerprint`` skips hashing the backbone when the caller already has it.
    """
    from .model import unwrap_model

    model = unwrap_model(model)
    source = dict(source or {})
    return {
        "name": source.get("name") or model.backbone_name,
        "fingerprint": fingerprint or backbone_fingerprint(model.backbone),
        "pretrained": bool(source.get("pretrained", False)),
        "weights": str(source["weights"]) if source.get("weights") else None,
        "kwargs": dict(source.get("kwargs") or {}),
        "data_config": _data_config(model),
    }


def _data_config(model: PromptedViT) -> dict[str, Any]:
    """The model's data config (:attr:`PromptedViT.data_config`: the input size it was built for) as JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()}


# ------------------------------------------------------------------------------------------ save
def save_checkpoint(
    model: nn.Module,
    path_or_dir: str | Path,
    extra_meta: Mapping[str, Any] | None = None,
    *,
    backbone_source: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
) -> Path:
    """Save the trainable tensors of ``model`` and its JSON description; returns the weights path.

    Args:
        model: a ``PromptedViT`` (or a DDP wrapper of one).
        path_or_dir: a directory (gets ``model.safetensors`` + ``config.json``) or a ``NAME.safetensors``
            path (gets ``NAME.json`` beside it).
        extra_meta: merged into the JSON (e.g. ``class_names``, ``metrics``, ``dataset``, ``epoch``).
            ``extra_meta["backbone_source"]`` is an alternative to the keyword below.
        backbone_source: where the backbone weights came from (see :func:`describe_backbone`).
        fingerprint: the backbone fingerprint when already computed (saves hashing the backbone again).
    """
    from safetensors.torch import save as save_bytes

    from .model import unwrap_model

    model = unwrap_model(model)
    extra = dict(extra_meta or {})
    recorded_source = extra.pop("backbone_source", None)
    source = backbone_source or recorded_source
    clash = [k for k in _RESERVED if k in extra]
    if clash:
        raise ValueError(f"extra_meta may not set the reserved keys {clash}.")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.trainable_state_dict().items()}
    backbone = describe_backbone(model, source, fingerprint)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "prompt_config": model.config.to_dict(),
        "backbone": backbone,
        "num_classes": int(model.num_classes),
        "class_names": None,
        "metrics": {},
        "trainable_keys": sorted(tensors),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    meta.update(extra)
    meta_text = json.dumps(meta, default=_json_default)
    payload = save_bytes(tensors, metadata={META_KEY: meta_text})
    weights_path, json_path = checkpoint_files(path_or_dir)
    atomic_write(weights_path, lambda f: f.write(payload))
    atomic_write_json(json_path, json.loads(meta_text))
    return weights_path


# ------------------------------------------------------------------------------------------ load
def _missing(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"No {what} at {path}: the path does not exist. Pass the directory written by `tcpa-viz train` "
        f"(it holds {WEIGHTS_FILE} and {META_FILE}) or the .safetensors file itself."
    )


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's tensors and JSON description without building a model.

    Raises CheckpointError when the file is missing, truncated, corrupt or not a tcpa checkpoint.
    """
    from safetensors import SafetensorError, safe_open

    weights_path, _ = checkpoint_files(path)
    if not weights_path.is_file():
        raise _missing(weights_path if Path(path).exists() else Path(path), "checkpoint")
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"The checkpoint {weights_path} is corrupt or truncated ({type(exc).__name__}: {exc}). "
            "Re-run training or restore the file from a backup."
        ) from exc
    meta = _parse_meta(header.get(META_KEY), weights_path)
    missing = sorted(set(meta.get("trainable_keys", [])) - set(tensors))
    if missing:
        raise CheckpointError(f"The checkpoint {weights_path} is incomplete: tensors {missing[:4]} are missing.")
    return tensors, meta


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Only the JSON description (cheap: reads the safetensors header, not the tensors)."""
    from safetensors import SafetensorError, safe_open

    weights_path, _ = checkpoint_files(path)
    if not weights_path.is_file():
        raise _missing(weights_path if Path(path).exists() else Path(path), "checkpoint")
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"The checkpoint {weights_path} is corrupt or truncated ({exc}).") from exc
    return _parse_meta(header.get(META_KEY), weights_path)


def _bad_meta(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"The checkpoint {path} has invalid metadata: {problem}. The metadata used is the JSON stored inside the "
        f".safetensors file (under '{META_KEY}'; {META_FILE} is only a copy); restore the file from the run folder "
        "(best/ or last/) or a backup, or train again."
    )


def validate_meta(meta: Any, path: str | Path = "<checkpoint>") -> dict[str, Any]:
    """Check the types and values of a checkpoint's JSON description; returns it, or raises CheckpointError
    naming the first field that is missing or wrong (metadata edited by hand, or written by another tool)."""
    path = Path(path)
    if not isinstance(meta, dict):
        raise _bad_meta(path, f"expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tcpa-viz checkpoint (format {meta.get('format')!r}).")
    version_ = meta.get("format_version")
    if isinstance(version_, bool) or not isinstance(version_, int):
        raise _bad_meta(path, f"format_version must be a whole number, got {version_!r}")
    if version_ > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer tcpa-viz (format {version_}); upgrade tcpa-viz.")
    missing = [k for k in ("prompt_config", "backbone", "num_classes", "trainable_keys") if k not in meta]
    if missing:
        raise _bad_meta(path, f"the field(s) {', '.join(missing)} are missing")
    num_classes = meta["num_classes"]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise _bad_meta(path, f"num_classes must be a whole number >= 1, got {num_classes!r}")
    keys = meta["trainable_keys"]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _bad_meta(path, "trainable_keys must be a list of tensor names")
    backbone = meta["backbone"]
    if not isinstance(backbone, dict) or not isinstance(backbone.get("name"), str) or not backbone["name"]:
        raise _bad_meta(path, "backbone must be an object with a timm model 'name'")
    for key, kind in (("fingerprint", str), ("weights", str), ("kwargs", dict), ("data_config", dict)):
        if backbone.get(key) is not None and not isinstance(backbone[key], kind):
            raise _bad_meta(path, f"backbone.{key} must be a {kind.__name__}, got {backbone[key]!r}")
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                              or len(names) != num_classes):
        raise _bad_meta(path, f"class_names must be a list of {num_classes} strings (num_classes), got {names!r}")
    if not isinstance(meta["prompt_config"], dict):
        raise _bad_meta(path, f"prompt_config must be an object, got {meta['prompt_config']!r}")
    try:
        PromptConfig.from_dict(meta["prompt_config"])
    except (TCPAError, TypeError, ValueError, KeyError) as exc:
        raise _bad_meta(path, f"prompt_config is not valid ({exc})") from exc
    return meta


def _check_sidecar(weights_path: Path, meta: dict[str, Any]) -> None:
    """Warn when the readable JSON copy beside the weights differs from the metadata inside them."""
    json_path = weights_path.parent / META_FILE if weights_path.name == WEIGHTS_FILE else \
        weights_path.with_suffix(".json")
    if not json_path.is_file():
        return
    try:
        copy = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        copy = None
    if copy != meta:
        logger.warning("warning: %s differs from the metadata stored in %s, which is what is used (edits to %s "
                       "have no effect)", json_path, weights_path.name, json_path.name)


def _parse_meta(text: str | None, path: Path) -> dict[str, Any]:
    if not text:
        raise CheckpointError(
            f"{path} is a safetensors file but not a tcpa-viz checkpoint (no '{META_KEY}' metadata). Backbone "
            "weight files go to --checkpoint, prompt checkpoints to --model."
        )
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad_meta(path, f"it is not valid JSON ({exc})") from exc
    meta = validate_meta(meta, path)
    _check_sidecar(path, meta)
    return meta


def _build(meta: dict[str, Any], backbone: str | nn.Module | None, checkpoint: str | Path | None,
           pretrained: bool | None) -> PromptedViT:
    import timm

    from .model import build_model

    cfg = PromptConfig.from_dict(meta["prompt_config"])
    num_classes = int(meta["num_classes"])
    info = meta.get("backbone", {})
    if isinstance(backbone, nn.Module):
        if not isinstance(backbone, VisionTransformer):
            raise UnsupportedModelError(
                f"backbone must be a timm VisionTransformer or a timm model name, got {type(backbone).__name__}."
            )
        return build_model(backbone, cfg, num_classes=num_classes, checkpoint=checkpoint)
    name = backbone or info.get("name")
    same_name = name == info.get("name")
    if not name or not timm.is_model(name):
        raise BackboneMismatchError(
            f"This checkpoint was trained on a custom backbone {info.get('name')!r} that cannot be rebuilt by "
            "name (fingerprint " f"{str(info.get('fingerprint', ''))[:12]}); pass the backbone module itself "
            "(load_checkpoint(path, backbone=vit)) or a timm model name with --backbone/--checkpoint."
        )
    weights = checkpoint
    if weights is None and same_name and info.get("weights") and Path(info["weights"]).is_file():
        weights = info["weights"]
    if pretrained is None:
        if weights is not None:
            pretrained = False
        elif name == DEMO_BACKBONE:
            pretrained = True
        else:
            pretrained = bool(info.get("pretrained", False)) and same_name
    kwargs = dict(info.get("kwargs") or {}) if same_name else {}
    return build_model(name, cfg, num_classes=num_classes, pretrained=pretrained, checkpoint=weights, **kwargs)


def load_checkpoint(
    path: str | Path,
    backbone: str | nn.Module | None = None,
    checkpoint: str | Path | None = None,
    pretrained: bool | None = None,
    device: str | torch.device = "cpu",
) -> PromptedViT:
    """Rebuild the ``PromptedViT`` saved at ``path`` and load its trained tensors.

    The backbone is rebuilt from the name in the checkpoint (``tcpa_demo_vit`` loads the shipped weights
    offline; a local weight file recorded at training time is reused when it still exists), or from
    ``backbone`` (a timm name or a timm ViT instance, which is wrapped in place) and ``checkpoint``
    (a backbone weight file). The backbone's fingerprint must equal the one recorded at training time.

    The returned model is in eval mode and carries the JSON description as ``model.checkpoint_meta``.

    Raises:
        CheckpointError: missing, truncated or corrupt checkpoint, or tensors that do not fit.
        BackboneMismatchError: the backbone differs from the one the checkpoint was trained on.
    """
    tensors, meta = read_checkpoint(path)
    info = meta.get("backbone", {})
    model = _build(meta, backbone, checkpoint, pretrained)
    expected = info.get("fingerprint")
    actual = backbone_fingerprint(model.backbone)
    if expected and actual != expected:
        given = backbone if isinstance(backbone, str) else (
            type(backbone).__name__ if backbone is not None else info.get("name"))
        weights = f" with weights {checkpoint}" if checkpoint else ""
        trained_weights = f" with weights {info['weights']}" if info.get("weights") else (
            " with timm pretrained weights" if info.get("pretrained") else "")
        random_init = not info.get("weights") and not info.get("pretrained") and \
            info.get("name") != DEMO_BACKBONE and backbone is None and checkpoint is None
        hint = (" It was trained on a randomly initialised backbone, which cannot be rebuilt by name; pass "
                "the backbone module itself.") if random_init else ""
        raise BackboneMismatchError(
            f"This checkpoint was trained on backbone {info.get('name')!r}{trained_weights} (fingerprint "
            f"{expected[:12]}), you gave {given!r}{weights} (fingerprint {actual[:12]}); pass "
            f"--backbone/--checkpoint of {info.get('name')!r} (the same weights it was trained with).{hint}"
        )
    model.load_trainable_state_dict(tensors)
    model.checkpoint_meta = meta
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ comparing two
def _backbone_facts(model: Any) -> dict[str, Any]:
    """What must agree between two models drawn side by side; ``model`` is a ``PromptedViT`` or an object
    with a ``.model`` attribute holding one (such as the figures' ``LoadedModel``)."""
    inner = getattr(model, "model", model)
    if isinstance(inner, nn.parallel.DistributedDataParallel):
        inner = inner.module
    backbone = getattr(inner, "backbone", None)
    if backbone is None:
        raise CheckpointError(f"Expected a prompted ViT (with a .backbone), got {type(inner).__name__}.")
    embed = getattr(backbone, "patch_embed", None)
    meta = getattr(inner, "checkpoint_meta", None) or {}
    recorded = (meta.get("backbone") or {}).get("fingerprint")
    return {
        "name": (meta.get("backbone") or {}).get("name") or getattr(inner, "backbone_name", None),
        "input size": tuple(int(v) for v in getattr(embed, "img_size", ()) or ()),
        "patch size": tuple(int(v) for v in getattr(embed, "patch_size", ()) or ()),
        "patch grid": tuple(int(v) for v in getattr(embed, "grid_size", ()) or ()),
        "width": int(getattr(backbone, "embed_dim", 0) or getattr(backbone, "num_features", 0)),
        "depth": len(getattr(backbone, "blocks", ())),
        "fingerprint": recorded or backbone_fingerprint(backbone),
    }


def check_same_backbone(a: Any, b: Any, what: tuple[str, str] = ("baseline", "TCPA")) -> None:
    """Refuse to compare two models that do not share their backbone.

    ``a`` and ``b`` are ``PromptedViT`` models (or objects with a ``.model`` holding one). They must agree on
    the input size, patch size and grid, width and depth, and on the backbone weights (fingerprint): a figure
    or rank report that puts them side by side is otherwise comparing backbones, not prompting methods.
    Raises BackboneMismatchError listing every difference.
    """
    fa, fb = _backbone_facts(a), _backbone_facts(b)

    def show(value: Any) -> str:
        if isinstance(value, tuple):
            return "x".join(map(str, value)) or "?"
        return str(value)[:12] if value is not None else "?"

    diffs = [f"{key} {show(fa[key])} vs {show(fb[key])}" for key in
             ("input size", "patch size", "patch grid", "width", "depth") if fa[key] != fb[key]]
    if not diffs and fa["fingerprint"] != fb["fingerprint"]:
        diffs.append(f"backbone weights (fingerprint {show(fa['fingerprint'])} vs {show(fb['fingerprint'])})")
    if diffs:
        raise BackboneMismatchError(
            f"The {what[0]} ({fa['name']}) and the {what[1]} ({fb['name']}) checkpoints were trained on different "
            f"backbones: {'; '.join(diffs)}. Comparing them side by side would compare backbones, not prompting "
            "methods; pass two checkpoints trained on the same backbone (same --backbone and --checkpoint)."
        )


# ------------------------------------------------------------------------------------------ training state
def save_training_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write the resume state (tensors, numbers, strings, lists, dicts) atomically with ``torch.save``."""
    return atomic_write(path, lambda f: torch.save(dict(state), f))


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_training_state` (``weights_only=True``: no arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No training state at {path}; train without --resume to start from scratch.")
    if torch_file_kind(path) is None:
        raise CheckpointError(
            f"The training state {path} is not a file written by torch.save (empty, text or another format); "
            "delete it and train again without --resume, or restore it from a backup."
        )
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refused to load the training state {path}: it holds arbitrary pickled objects."
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"The training state {path} is corrupt or truncated ({type(exc).__name__}); delete it and train "
            "again without --resume."
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"The training state {path} is not a dictionary.")
    return state


__all__ = [
    "FORMAT", "FORMAT_VERSION", "META_FILE", "WEIGHTS_FILE", "atomic_write", "atomic_write_json",
    "check_same_backbone", "checkpoint_files", "describe_backbone", "load_checkpoint", "load_training_state",
    "read_checkpoint",
    "read_checkpoint_meta", "save_checkpoint", "save_training_state", "validate_meta",
]
