"""Load the authors' released TCPA model code (VFPT+TCPA) from a local copy of their repository, for timing.

Their code is never vendored: ``load_authors_model`` imports it from the folder it is given, at run time,
and gives it the benchmark's own backbone and prompt weights so its logits can be checked against
``tcpa_core`` before anything is timed. What their code needs, and why it may not run here, is checked
first and reported in one line (:class:`AuthorsCodeError`):

* ``models/TCPA.py`` ``Pool.__init__`` calls ``.to('cuda')`` on its parameters (result unused) and
  ``train/utils.py`` puts every mask on ``cuda`` whenever CUDA is available: the code needs a CUDA device,
  so it runs only with ``--device cuda``;
* ``models/VFPT_TCPA.py`` and ``models/TCPA.py`` hard-code ViT-B/16 at 224 px (197 tokens, 196 patches,
  12 heads, width 768, 12 blocks);
* ``models/__init__.py`` imports ``models/VPT.py``, ``models/VPT_DVP.py`` and ``models/VPT_TCPA.py``, which
  the release does not contain, so the ``models`` package is entered without running its ``__init__``;
* ``models/utils.py`` ``get_backbone`` loads weights from a hard-coded relative path (or downloads them):
  the model module's ``get_backbone`` is replaced by one returning the benchmark's backbone.

Their trainer never sets ``requires_grad=False`` on the backbone (it only hands ``learnable_parameters()``
to the optimiser) and trains under CUDA autocast; here the backbone is frozen and the step runs in float32,
so the timing compares the model computation with ``tcpa_core``'s, not a wasted weight-gradient pass.
"""

from __future__ import annotations

import copy
import importlib
import sys
import types
from argparse import ArgumentParser
from pathlib import Path

import torch
from torch import nn

from tcpa_core import PromptedViT

REQUIRED_FILES = ("models/VFPT_TCPA.py", "models/TCPA.py", "models/utils.py", "train/utils.py", "utils/args.py")
_PACKAGES = ("models", "train", "utils")


class AuthorsCodeError(RuntimeError):
    """The authors' model code cannot be loaded or run here (the message says why and what to do)."""


def check_authors_repo(repo: Path, model: PromptedViT, device: torch.device) -> None:
    """Raise :class:`AuthorsCodeError` unless the authors' code in ``repo`` can run ``model``'s shape on
    ``device``."""
    missing = [name for name in REQUIRED_FILES if not (repo / name).is_file()]
    if missing:
        raise AuthorsCodeError(
            f"--authors-repo {repo}: not a copy of the authors' TCPA repository (missing {', '.join(missing)})"
        )
    bb, cfg = model.backbone, model.config
    shape = (len(bb.blocks), bb.embed_dim, bb.blocks[0].attn.num_heads, bb.patch_embed.num_patches,
             model.num_prefix)
    if shape != (12, 768, 12, 196, 1) or cfg.method != "tcpa":
        raise AuthorsCodeError(
            "--authors-repo: the authors' models/TCPA.py hard-codes ViT-B/16 at 224 px (12 blocks, width 768, "
            f"12 heads, 196 patches, one CLS token) and TCPA with token matching; this benchmark model is {shape} "
            f"with method {cfg.method!r} (drop --quick / use --model vit_base_patch16_224)"
        )
    if device.type != "cuda" or not torch.cuda.is_available():
        raise AuthorsCodeError(
            "--authors-repo: the authors' code needs CUDA (models/TCPA.py Pool.__init__ calls .to('cuda') and "
            "train/utils.py puts masks on cuda when it exists); run with --device cuda on a machine with a GPU"
        )
    for name in _PACKAGES:
        loaded = sys.modules.get(name)
        origin = getattr(loaded, "__file__", None) or " ".join(getattr(loaded, "__path__", []))
        if loaded is not None and not origin.startswith(str(repo)):
            raise AuthorsCodeError(f"--authors-repo: a module named {name!r} is already imported; the authors' "
                                   "code uses that top-level name (run the benchmark from a clean interpreter)")


def _import_model_module(repo: Path) -> types.ModuleType:
    """``models.VFPT_TCPA`` imported from ``repo``; the ``models`` package is entered without its broken
    ``__init__`` (it imports files the release lacks)."""
    package = types.ModuleType("models")
    package.__path__ = [str(repo / "models")]
    sys.modules.setdefault("models", package)
    sys.path.insert(0, str(repo))
    try:
        return importlib.import_module("models.VFPT_TCPA")
    except ImportError as err:
        raise AuthorsCodeError(f"--authors-repo: importing the authors' models/VFPT_TCPA.py failed: {err}") from err
    finally:
        sys.path.remove(str(repo))


def load_authors_model(repo: Path, model: PromptedViT, device: torch.device) -> nn.Module:
    """The authors' ``Model_VFPT_TCPA`` (token matching, ``--RDVP --TDVP``) with ``model``'s backbone, head,
    keys and prompts, frozen backbone, eval mode, on ``device``. Its forward returns ``(logits, pool_loss)``
    and equals a ``tcpa_core`` model with the same weights and ``fourier=True``."""
    repo = repo.resolve()
    check_authors_repo(repo, model, device)
    module = _import_model_module(repo)
    args_module = importlib.import_module("utils.args")
    cfg = model.config
    parser = ArgumentParser()
    args_module.add_experiment_args(parser)
    args_module.add_model_args(parser)
    args_module.add_management_args(parser)
    args = parser.parse_args([
        "--model", "VFPT_TCPA", "--RDVP", "--TDVP", "--prompt_dropout_dvp", "0",
        "--pool_size_cls", str(cfg.cls_pool_size), "--pool_size_image", str(cfg.image_pool_size),
        "--topk_cls", str(cfg.cls_topk), "--topk_image", str(cfg.image_topk),
        "--len_prompts_cls", str(cfg.prompt_length), "--len_prompts_image", str(cfg.prompt_length),
    ])
    backbone = copy.deepcopy(model.backbone)
    backbone.head = copy.deepcopy(model.head)
    module.get_backbone = lambda _args: backbone
    authors = module.Model_VFPT_TCPA(args)
    pools = model.prompts
    with torch.no_grad():
        authors.Pool.Pool_cls.keys.copy_(pools.cls_keys)
        authors.Pool.Pool_cls.prompts.copy_(pools.cls_prompts)
        authors.Pool.Pool_image.keys.copy_(pools.image_keys)
        authors.Pool.Pool_image.prompts.copy_(pools.image_prompts)
    authors.backbone.requires_grad_(False)
    authors.backbone.head.requires_grad_(True)
    authors.to(device)
    authors.eval()
    return authors
