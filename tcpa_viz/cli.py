"""The ``tcpa-viz`` command line: ``train``, ``eval``, ``demo``, ``figure N``, ``rank`` and ``app`` (each
sub-command registers itself: one function decorated with :func:`command` that adds its parser and sets
``func``).

Errors raised on purpose (:class:`tcpa_core.errors.TCPAError`) and bad arguments print one line
``error: ...`` and exit with status 2. Every command also runs under
``torchrun --nproc_per_node=N -m tcpa_viz.cli ...`` (DistributedDataParallel; rank 0 writes and prints).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from tcpa_core.backbone import DEMO_BACKBONE
from tcpa_core.config import METHODS, PromptConfig
from tcpa_core.data import dataset_size
from tcpa_core.distributed import cleanup_distributed, derive_seed, init_distributed, is_main_process
from tcpa_core.errors import CheckpointError, DatasetError, TCPAError
from tcpa_core.model import PromptedViT
from tcpa_core.threads import configure_threads

Register = Callable[[argparse._SubParsersAction], None]
COMMANDS: list[Register] = []

DEMO_METHODS = ("vpt-deep", "tcpa")
NO_FLIP_DATASETS = ("digits", "svhn", "gtsrb")


def command(register: Register) -> Register:
    """Decorator: ``register(subparsers)`` adds one sub-command (its parser calls ``set_defaults(func=...)``,
    where ``func(args) -> int`` is the exit status)."""
    COMMANDS.append(register)
    return register


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _say(*parts: Any) -> None:
    if is_main_process():
        print(*parts, flush=True)


# ------------------------------------------------------------------------------------------ value types
def _whole(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """argparse type: a whole number in ``[low, high]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    parse.__name__ = "whole number"
    return parse


def _number(low: float | None = None, *, strict: bool = False, below: float | None = None
            ) -> Callable[[str], float]:
    """argparse type: a finite number ``>= low`` (``> low`` when ``strict``) and ``< below``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (low is None or (value > low if strict else value >= low)) and \
            (below is None or value < below)
        if not ok:
            bound = "" if low is None else (f"> {low:g}" if strict else f">= {low:g}")
            bound += ("" if below is None else (" and " if bound else "") + f"< {below:g}")
            raise argparse.ArgumentTypeError(f"must be a finite number{' ' + bound if bound else ''}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def _json_file(text: str) -> str:
    """argparse type: a file that holds a JSON object (e.g. the demo's summary.json)."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} does not exist or is not a file")
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{text} is not a JSON file ({type(exc).__name__}); pass the demo's "
                                         "summary.json") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text} holds JSON but not an object like the demo's summary.json")
    return text


def _path_text(text: str) -> str:
    """argparse type: a path that is not empty (an empty --out would write into the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder path, got an empty string")
    return text


POSITIVE = _whole(1)
NON_NEGATIVE = _whole(0)


# ------------------------------------------------------------------------------------------ shared args
def _add_backbone_args(p: argparse.ArgumentParser, default: str | None = DEMO_BACKBONE) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default=default, metavar="NAME",
                   help=f"timm ViT name (default: {default or 'the one recorded in the checkpoint'}); "
                        f"{DEMO_BACKBONE} ships its own weights and works offline")
    g.add_argument("--checkpoint", metavar="FILE",
                   help="local backbone weights (.pth/.pt/.safetensors/.npz) for --backbone")
    g.add_argument("--pretrained", action="store_true",
                   help="download timm's pretrained weights for --backbone (needs internet)")
    g.add_argument("--backbone-kwargs", metavar="JSON", type=_json_object,
                   help='extra timm.create_model arguments, e.g. \'{"img_size": 384}\'')


def _add_data_args(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    from tcpa_core.data.datasets import DATASET_NAMES

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=default, metavar="NAME",
                   help=f"one of {', '.join(DATASET_NAMES)} (default: {default or 'the training dataset'})")
    g.add_argument("--data-root", metavar="DIR", help="folder holding the dataset (not needed for digits)")
    g.add_argument("--val-fraction", type=_number(0.0, strict=True, below=1.0), default=0.1,
                   help="share of the training set held out for validation where a dataset has no val split")
    g.add_argument("--data-seed", type=NON_NEGATIVE, default=0,
                   help="seed of the train/val carving and digit rendering")
    g.add_argument("--image-dir", metavar="DIR", help="vpt-json: folder the JSON image paths are relative to")
    g.add_argument("--samples-per-digit", type=POSITIVE, help="digits: renderings per source digit (default 1)")
    g.add_argument("--max-samples", type=POSITIVE, metavar="N",
                   help="use a seeded random subset of at most N samples per split (quick runs)")
    g.add_argument("--num-workers", type=NON_NEGATIVE, default=0, help="data loading processes (default 0)")


def _add_prompt_args(p: argparse.ArgumentParser, choose_method: bool = True) -> None:
    """Prompt options; ``choose_method=False`` leaves out those that select the method (``--method``,
    ``--fourier``, ``--input-prompt``) for commands that run several methods."""
    g = p.add_argument_group("prompts (defaults: the authors' scripts)")
    if choose_method:
        g.add_argument("--method", choices=METHODS, default="tcpa")
    g.add_argument("--cls-pool-size", type=int)
    g.add_argument("--image-pool-size", type=int)
    g.add_argument("--cls-topk", type=int)
    g.add_argument("--image-topk", type=int)
    g.add_argument("--prompt-length", type=int)
    g.add_argument("--num-prompts", type=int, help="prompts per layer for vpt-shallow/vpt-deep/vfpt")
    if choose_method:
        g.add_argument("--fourier", action="store_true", default=None, help="VFPT+TCPA (tcpa/r-tcpa)")
    g.add_argument("--fourier-fraction", type=float)
    if choose_method:
        g.add_argument("--input-prompt", choices=("pad", "conv"), help="add an input-space prompt (VP)")
    g.add_argument("--prompt-dropout", type=float)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: tcpa_core.train.TrainConfig)")
    g.add_argument("--epochs", type=POSITIVE)
    g.add_argument("--batch-size", type=POSITIVE, help="global batch size")
    g.add_argument("--lr", type=_number(0.0, strict=True))
    g.add_argument("--min-lr", type=_number(0.0))
    g.add_argument("--weight-decay", type=_number(0.0))
    g.add_argument("--warmup-epochs", type=_number(0.0))
    g.add_argument("--random-epochs", type=NON_NEGATIVE, help="epochs of random prompt selection (TCPA warm-up)")
    g.add_argument("--pool-loss-weight", type=_number(0.0))
    g.add_argument("--mixup", dest="mixup_alpha", type=_number(0.0), help="mixup alpha (0 = off)")
    g.add_argument("--label-smoothing", type=_number(0.0, below=1.0))
    g.add_argument("--grad-clip", type=_number(0.0, strict=True))
    g.add_argument("--seed", type=NON_NEGATIVE)
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: auto)")
    g.add_argument("--no-augment", action="store_true", help="no random crops/flips on the training split")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object like '{\"img_size\": 384}'")
    return value


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _prompt_config(args: argparse.Namespace) -> PromptConfig:
    names = ("cls_pool_size", "image_pool_size", "cls_topk", "image_topk", "prompt_length", "num_prompts",
             "fourier", "fourier_fraction", "input_prompt", "prompt_dropout")
    return PromptConfig.from_dict({"method": args.method, **_given(args, names)})


def _train_config(args: argparse.Namespace, **defaults: Any) -> Any:
    from tcpa_core.train import TrainConfig

    names = ("epochs", "batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs", "random_epochs",
             "pool_loss_weight", "mixup_alpha", "label_smoothing", "grad_clip", "seed", "device")
    values = {**defaults, **_given(args, names), "num_workers": args.num_workers,
              "progress": not args.no_progress}
    return TrainConfig(**values)


# ------------------------------------------------------------------------------------------ model + data
def _backbone_source(args: argparse.Namespace) -> dict[str, Any]:
    weights = Path(args.checkpoint).expanduser().resolve() if args.checkpoint else None
    pretrained = bool(args.pretrained) or (args.backbone == DEMO_BACKBONE and weights is None)
    return {"name": args.backbone, "pretrained": pretrained, "weights": str(weights) if weights else None,
            "kwargs": dict(args.backbone_kwargs or {})}


def _build_model(source: dict[str, Any], cfg: PromptConfig, num_classes: int) -> PromptedViT:
    from tcpa_core.model import build_model

    name = source["name"]
    if not source["pretrained"] and not source["weights"]:
        logging.getLogger(__name__).warning(
            "warning: backbone %s has random weights; pass --checkpoint FILE or --pretrained", name)
    try:
        return build_model(name, cfg, num_classes=num_classes, pretrained=source["pretrained"],
                           checkpoint=source["weights"], **source["kwargs"])
    except TCPAError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        if source["pretrained"] and name != DEMO_BACKBONE:
            raise CheckpointError(
                f"Could not get timm's pretrained weights for {name} ({type(exc).__name__}: {exc}); without "
                "internet, download them elsewhere and pass the file with --checkpoint FILE."
            ) from exc
        raise


def _dataset_spec(args: argparse.Namespace) -> dict[str, Any]:
    options = _given(args, ("samples_per_digit",)) if args.dataset == "digits" else {}
    if args.image_dir:
        options["image_dir"] = args.image_dir
    root = str(Path(args.data_root).expanduser().resolve()) if args.data_root else None
    return {"name": args.dataset, "root": root, "val_fraction": args.val_fraction, "seed": args.data_seed,
            "options": options, "max_samples": args.max_samples}


def _open_split(spec: dict[str, Any], split: str, transform: Callable[..., Any] | None) -> Dataset:
    from tcpa_core.data import open_split

    return open_split(spec, split, transform)


def _set_transform(data: Dataset, transform: Callable[..., Any]) -> Dataset:
    setattr(data.dataset if isinstance(data, Subset) else data, "transform", transform)  # noqa: B010
    return data


def _transforms(model: PromptedViT, dataset: str, augment: bool) -> tuple[Callable, Callable]:
    from tcpa_core.data import build_transforms

    cfg = model.data_config
    eval_tf = build_transforms(cfg, train=False)
    if not augment or dataset == "digits":
        return eval_tf, eval_tf
    return build_transforms(cfg, train=True, hflip=dataset not in NO_FLIP_DATASETS), eval_tf


# ------------------------------------------------------------------------------------------ train
def _run_train(args: argparse.Namespace) -> int:
    from tcpa_core.run_lock import RunLock
    from tcpa_core.train import check_classes, check_run_folder, check_writable_folder, resolve_device, train

    out = Path(args.out)
    cfg = _train_config(args)
    resolve_device(cfg.device)
    check_writable_folder(out, "--out")  # all before any data is read
    with RunLock(out) if is_main_process() else contextlib.nullcontext():
        check_run_folder(out, resume=args.resume, overwrite=args.force)
        return _train_in(args, out, cfg, check_classes, train)


def _train_in(args: argparse.Namespace, out: Path, cfg: Any, check_classes: Callable[..., None],
              train: Callable[..., dict[str, Any]]) -> int:
    spec = _dataset_spec(args)
    train_set = _open_split(spec, "train", None)
    classes = list(getattr(train_set, "classes", []))
    if not classes:
        raise DatasetError(f"Dataset {args.dataset!r} reports no classes.")
    check_classes(len(classes), train_set)
    source = _backbone_source(args)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = _build_model(source, _prompt_config(args), len(classes))
    train_tf, eval_tf = _transforms(model, args.dataset, not args.no_augment)
    train_set, val_set = _set_transform(train_set, train_tf), _open_split(spec, "val", eval_tf)
    meta = {"dataset": spec, "class_names": classes, "backbone_source": source}
    _say(f"training {model.config.method} on {args.dataset} ({dataset_size(train_set)} train / "
         f"{dataset_size(val_set)} val "
         f"images, {len(classes)} classes) with backbone {source['name']}; outputs in {out}")
    summary = train(model, train_set, val_set, cfg, out, resume=args.resume, meta=meta, overwrite=args.force)
    acc = summary["best_val_acc"]
    _say(f"done: best val accuracy {100 * acc:.2f}% at epoch {summary['best_epoch']}, "
         f"{summary['seconds_per_epoch']:.1f} s/epoch; best checkpoint {summary['best_checkpoint']}")
    _say(f"evaluate on the test split with: tcpa-viz eval --model {out}")
    return 0


@command
def _train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="prompt-tune a frozen ViT on a dataset",
                       description="Prompt-tune a frozen ViT; model selection on the validation split.")
    _add_backbone_args(p)
    _add_data_args(p)
    _add_prompt_args(p)
    _add_train_args(p)
    p.add_argument("--out", default="runs/train", type=_path_text, metavar="DIR",
                   help="output folder (default runs/train)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue (or reuse) the run saved in --out")
    again.add_argument("--force", action="store_true",
                       help="replace the run saved in --out (without it, an --out that holds a run is refused)")
    p.set_defaults(func=_run_train)


# ------------------------------------------------------------------------------------------ eval
def _run_eval(args: argparse.Namespace) -> int:
    from tcpa_core.checkpoint import load_checkpoint, read_checkpoint_meta
    from tcpa_core.train import evaluate, resolve_device
    from tcpa_viz.models import resolve_checkpoint

    if args.json:
        _check_output_file(args.json, "--json")
    device = resolve_device(args.device or "auto")
    path = resolve_checkpoint(args.model)
    meta = read_checkpoint_meta(path)
    backbone = args.backbone
    weights = Path(args.checkpoint).expanduser() if args.checkpoint else None
    model = load_checkpoint(path, backbone=backbone, checkpoint=weights,
                            pretrained=True if args.pretrained else None,
                            device=device)
    if args.dataset:
        spec = _dataset_spec(args)
    elif meta.get("dataset"):
        spec = {**meta["dataset"], "max_samples": args.max_samples}
    else:
        raise DatasetError("This checkpoint does not record its dataset; pass --dataset (and --data-root).")
    _, eval_tf = _transforms(model, spec["name"], augment=False)
    data = _open_split(spec, args.split, eval_tf)
    if not args.ignore_class_names:
        _check_class_names(meta.get("class_names"), list(getattr(data, "classes", None) or []), spec["name"])
    result = evaluate(model, data, args.batch_size, return_predictions=False, num_workers=args.num_workers,
                      progress=not args.no_progress)
    report = {"checkpoint": str(path), "dataset": spec["name"], "split": args.split,
              "method": model.config.method, **result.to_dict()}
    _say(f"{model.config.method} on {spec['name']}/{args.split}: accuracy {100 * result.accuracy:.2f}% "
         f"({result.num_samples} images), loss {result.loss:.4f}")
    if args.json:
        from tcpa_core.checkpoint import atomic_write_json

        if is_main_process():
            atomic_write_json(args.json, report)
        _say(f"wrote {args.json}")
    return 0


@command
def _eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a trained checkpoint on a dataset split",
                       description="Evaluate a checkpoint (default: on the test split of its training dataset).")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="checkpoint folder, or a `tcpa-viz train --out` folder (uses its best/)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--batch-size", type=POSITIVE, default=128)
    p.add_argument("--device", help="cpu, cuda, ... (default: auto)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.add_argument("--ignore-class-names", action="store_true",
                   help="evaluate even when the dataset's class names differ from the checkpoint's")
    p.add_argument("--no-progress", action="store_true")
    _add_backbone_args(p, default=None)
    _add_data_args(p, default=None)
    p.set_defaults(func=_run_eval)


def _check_class_names(trained: list[str] | None, given: list[str], dataset: str) -> None:
    """Refuse to score a checkpoint on a dataset whose classes are not the ones it was trained on."""
    if not trained or not given or list(trained) == list(given):
        return
    first = next((i for i, (a, b) in enumerate(zip(trained, given, strict=False)) if a != b),
                 min(len(trained), len(given)))
    got = lambda names: repr(names[first]) if first < len(names) else "none"  # noqa: E731
    raise DatasetError(
        f"The classes of {dataset!r} differ from the checkpoint's ({len(trained)} trained classes, {len(given)} in "
        f"the dataset; class {first} is {got(trained)} in the checkpoint and {got(given)} in the dataset): the "
        "scores would compare swapped labels. Pass the dataset the model was trained on, or --ignore-class-names "
        "if its label indices mean the same classes."
    )


def _check_output_file(path: str | Path, option: str) -> None:
    """Refuse an output file path that is a folder or sits where nothing can be written (before any work)."""
    from tcpa_core.errors import OutputPathError
    from tcpa_core.train import check_writable_folder

    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputPathError(f"{option} {target} is a folder; {option} needs a file name (e.g. {target}/eval.json).")
    check_writable_folder(target.parent, f"{option} {target}: its folder")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputPathError(f"{option} {target} cannot be written (no write permission); pass another file.")


# ------------------------------------------------------------------------------------------ demo
def _demo_train_config(args: argparse.Namespace) -> Any:
    from tcpa_core.train import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4,
                       warmup_epochs=args.warmup_epochs, random_epochs=args.random_epochs, seed=args.seed,
                       num_workers=args.num_workers, progress=not args.no_progress)


def _demo_prompt_config(args: argparse.Namespace, method: str) -> PromptConfig:
    """The demo's settings for ``method``: of the demo's pool sizes, top-k, prompt length (1) and number of
    prompts, those the method reads (its ``config_fields`` in the method registry)."""
    from tcpa_core.methods import get_method

    settings = {"cls_pool_size": args.cls_pool_size, "image_pool_size": args.image_pool_size,
                "cls_topk": args.cls_topk, "image_topk": args.image_topk, "prompt_length": 1,
                "num_prompts": args.num_prompts}
    fields = get_method(method).config_fields
    return PromptConfig.from_dict({"method": method, **{k: v for k, v in settings.items() if k in fields}})


def _run_demo(args: argparse.Namespace) -> int:
    from tcpa_core.run_lock import RunLock
    from tcpa_core.train import check_writable_folder

    out = Path(args.out)
    check_writable_folder(out, "--out")
    with RunLock(out) if is_main_process() else contextlib.nullcontext():
        return _demo_in(args, out)


def _previous_demo_methods(summary_path: Path) -> dict[str, Any]:
    """The per-method results of an earlier demo in the same folder whose checkpoints still exist."""
    try:
        previous = json.loads(summary_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    methods = previous.get("methods") if isinstance(previous, dict) else None
    if not isinstance(methods, dict):
        return {}
    return {m: info for m, info in methods.items()
            if isinstance(info, dict) and Path(str(info.get("checkpoint", ""))).exists()}


def _demo_in(args: argparse.Namespace, out: Path) -> int:
    from tcpa_core.checkpoint import atomic_write_json, load_checkpoint
    from tcpa_core.errors import RunExistsError
    from tcpa_core.train import ResumeStatus, evaluate, resume_differences, resume_status, train

    spec = {"name": "digits", "root": None, "val_fraction": 0.1, "seed": args.data_seed,
            "options": {"samples_per_digit": args.samples_per_digit}, "max_samples": args.max_samples}
    source = {"name": DEMO_BACKBONE, "pretrained": True, "weights": None, "kwargs": {}}
    cfg = _demo_train_config(args)
    splits: dict[str, Dataset] = {}
    planned: list[tuple[str, PromptedViT, ResumeStatus, dict[str, Any]]] = []
    for method in args.methods:  # decide for every method before training any
        if not splits:
            splits["train"] = _open_split(spec, "train", None)
        classes = list(getattr(splits["train"], "classes", []))
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        model = _build_model(source, _demo_prompt_config(args, method), len(classes))
        if "val" not in splits:
            _, eval_tf = _transforms(model, "digits", augment=False)
            _set_transform(splits["train"], eval_tf)
            for split in ("val", "test"):
                splits[split] = _open_split(spec, split, eval_tf)
        meta = {"dataset": spec, "class_names": classes, "backbone_source": source}
        status: ResumeStatus = "none" if args.force else resume_status(
            out / method, model, splits["train"], splits["val"], cfg, meta)
        if status == "incompatible":
            diffs = resume_differences(out / method, model, splits["train"], splits["val"], cfg, meta)
            raise RunExistsError(
                f"{out / method} holds a {method} run with another configuration ({'; '.join(diffs[:4])}); "
                "retraining would replace it. Pass --force to retrain it (the results of the other methods in "
                f"{out / 'summary.json'} are kept), or another --out folder."
            )
        planned.append((method, model, status, meta))
    train_set, val_set = splits["train"], splits["val"]
    methods: dict[str, Any] = {}
    for method, model, run_status, meta in planned:
        run_dir = out / method
        if run_status == "finished":
            _say(f"[{method}] reusing the finished checkpoint in {run_dir} (same configuration)")
        else:
            _say(f"[{method}] training for {cfg.epochs} epochs on {dataset_size(train_set)} digits -> {run_dir}")
        summary = train(model, train_set, val_set, cfg, run_dir, resume=run_status in ("finished", "resumable"),
                        meta=meta, overwrite=args.force)
        best = load_checkpoint(run_dir / "best", backbone=DEMO_BACKBONE)
        test = evaluate(best, splits["test"], batch_size=2 * cfg.batch_size,
                        num_workers=args.num_workers)
        methods[method] = {
            "test_acc": test.accuracy,
            "test_samples": test.num_samples,
            "best_val_acc": summary["best_val_acc"],
            "best_epoch": summary["best_epoch"],
            "seconds_per_epoch": summary["seconds_per_epoch"],
            "total_train_seconds": summary["total_train_seconds"],
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "checkpoint": str(run_dir / "best"),
            "run_dir": str(run_dir),
            "cached": run_status == "finished",
            "prompt_config": model.config.to_dict(),
            "train_config": cfg.to_dict(),
        }
        _say(f"[{method}] test accuracy {100 * test.accuracy:.2f}% (best val {100 * summary['best_val_acc']:.2f}% "
             f"at epoch {summary['best_epoch']}), {summary['seconds_per_epoch']:.1f} s/epoch")
    summary_path = out / "summary.json"
    kept = {m: info for m, info in _previous_demo_methods(summary_path).items() if m not in methods}
    if kept:
        _say(f"keeping the earlier results of {', '.join(kept)} in {summary_path}")
    methods = {**methods, **kept}
    if is_main_process():
        atomic_write_json(summary_path, {
            "task": "digits on clutter (scikit-learn digits), selection on val, accuracy on test",
            "backbone": DEMO_BACKBONE,
            "dataset": spec,
            "train_config": cfg.to_dict(),
            "methods": methods,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
    if not args.no_figures and is_main_process():
        from tcpa_viz.figures import FIGURES_SUBDIR, run_all

        _say(f"\nwriting figures 1, 3, 5, 6 and the rank report to {out / FIGURES_SUBDIR}/")
        run_all(out, log=lambda line: _say(f"  {line}"))
        from tcpa_viz.explainers.report import run_demo_explain

        run_demo_explain(None, None, splits["test"], out / "explain", demo_dir=out, log=lambda s: _say(f"  {s}"))
    if "tcpa" in methods and not args.no_figures and is_main_process():
        from tcpa_viz.atlas import run_demo_atlas

        _say(f"\nprompt atlas, selection rules and last-block ablations of TCPA -> {out / 'atlas'}/")
        run_demo_atlas(load_checkpoint(out / "tcpa" / "best", backbone=DEMO_BACKBONE), splits["test"], out / "atlas",
                       log=lambda line: _say(f"  {line}"))
    _say(f"\nDemo outputs are in {out}/ (checkpoints in {out}/<method>/best, summary in {summary_path}).")
    _say("Open the dashboard on them with: tcpa-viz app")
    return 0


def comma_choices(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """The comma-separated names of ``text``, each one of ``allowed`` (the body of an argparse ``type``);
    ``what`` names them in the error, e.g. ``"method(s)"``."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown or text!r}; choose from {', '.join(allowed)}")
    return values


def _method_list(text: str) -> list[str]:
    methods = comma_choices(text, METHODS, "method(s)")
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"method(s) {', '.join(twice)} listed more than once")
    return methods


@command
def _demo_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train VPT-deep and TCPA on the digits demo task with the demo backbone",
                       description="Prompt-tune VPT-deep and TCPA on digits-on-clutter with the shipped demo "
                                   "backbone, select by val, evaluate on test, write demo_out/summary.json, then "
                                   "figures 1, 3, 5, 6 and the rank report into demo_out/figures/. "
                                   "Finished runs with the same configuration are reused.")
    p.add_argument("--out", default="demo_out", type=_path_text, metavar="DIR")
    p.add_argument("--methods", type=_method_list, default=list(DEMO_METHODS),
                   help=f"comma-separated methods (default {','.join(DEMO_METHODS)})")
    p.add_argument("--epochs", type=POSITIVE, default=5,
                   help="epochs per method (default 5, so that the whole demo fits in 5 minutes on 2 cores; "
                        "10 reproduces the results of the release before)")
    p.add_argument("--batch-size", type=POSITIVE, default=64)
    p.add_argument("--lr", type=_number(0.0, strict=True), default=5e-3)
    p.add_argument("--warmup-epochs", type=_number(0.0), default=1.0)
    p.add_argument("--random-epochs", type=NON_NEGATIVE, default=1)
    p.add_argument("--cls-pool-size", type=POSITIVE, default=18)
    p.add_argument("--image-pool-size", type=POSITIVE, default=18)
    p.add_argument("--cls-topk", type=POSITIVE, default=10)
    p.add_argument("--image-topk", type=POSITIVE, default=10)
    p.add_argument("--num-prompts", type=POSITIVE, default=10, help="VPT-deep prompts per layer")
    p.add_argument("--samples-per-digit", type=POSITIVE, default=1)
    p.add_argument("--max-samples", type=POSITIVE, metavar="N", help="at most N samples per split (quick runs)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--data-seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--num-workers", type=NON_NEGATIVE, default=0)
    p.add_argument("--force", action="store_true",
                   help="retrain every method even when finished checkpoints exist, also over runs with another "
                        "configuration (without it those are refused); other methods' results are kept")
    p.add_argument("--no-figures", action="store_true", help="skip the figures and the rank report")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_demo)


# ------------------------------------------------------------------------------------------ figures, rank, app
def _add_pair_args(p: argparse.ArgumentParser, several: bool) -> None:
    g = p.add_argument_group("checkpoints and data")
    more = " (repeat once per --dataset for figure 6)" if several else ""
    g.add_argument("--baseline", action="append", default=[], metavar="DIR",
                   help=f"baseline checkpoint folder (default: the VPT-deep run of --demo-dir){more}")
    g.add_argument("--tcpa", action="append", default=[], metavar="DIR",
                   help=f"TCPA checkpoint folder (default: the TCPA run of --demo-dir){more}")
    g.add_argument("--dataset", action="append", default=[], metavar="NAME",
                   help="dataset (default: the one the baseline was trained on, the digits demo task for the demo)"
                        + ("; repeat for several rows of figure 6" if several else ""))
    g.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="folder of --dataset (once per --dataset when given; '-' for none)")
    g.add_argument("--split", default="test", choices=("train", "val", "test"))
    g.add_argument("--demo-dir", default="demo_out", metavar="DIR",
                   help="demo folder providing the default checkpoints (default demo_out)")
    g.add_argument("--out", metavar="DIR", help="output folder (default: <demo-dir>/figures)")
    g.add_argument("--backbone", metavar="NAME", help="rebuild the backbone from this timm name instead of the "
                                                      "recorded one")
    g.add_argument("--checkpoint", metavar="FILE", help="backbone weight file to use instead of the recorded one")


def _single(values: Sequence[str], option: str) -> str | None:
    from tcpa_viz.figures import FigureArgumentError

    if len(values) > 1:
        raise FigureArgumentError(f"{option} takes one value here (several only for `figure 6`), got {len(values)}.")
    return values[0] if values else None


def _figure_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Loaded baseline/TCPA models and the data spec of the single-dataset figures and the rank report."""
    from tcpa_viz.figures import FIGURES_SUBDIR, DataSpec, load_pair

    baseline, tcpa = _single(args.baseline, "--baseline"), _single(args.tcpa, "--tcpa")
    name, root = _single(args.dataset, "--dataset"), _single(args.data_root, "--data-root")
    base, tc = load_pair(baseline, tcpa, args.demo_dir, backbone=args.backbone, backbone_weights=args.checkpoint)
    _check_pair(base, tc, getattr(args, "layer", None))
    data = DataSpec(name=name, root=None if root in (None, "-") else root, split=args.split) if name else None
    if data is None and args.split != "test":
        data = DataSpec.from_meta(base.meta, args.split)
    out = Path(args.out) if args.out else Path(args.demo_dir) / FIGURES_SUBDIR
    return {"baseline": base, "tcpa": tc, "data": data, "out_dir": out, "demo_dir": args.demo_dir}


def _check_pair(base: Any, tcpa: Any, layer: int | None) -> None:
    """``layer`` (``--layer``) a block both checkpoints have (``load_pair`` checked that they share a backbone)."""
    from tcpa_viz.figures import FigureArgumentError

    depth = len(base.model.backbone.blocks)
    if layer is not None and not -depth <= layer < depth:
        raise FigureArgumentError(f"--layer {layer} is out of range: the backbone has {depth} blocks; pass a layer "
                                  f"in {-depth}..{depth - 1} (negative counts from the last).")


def _figure6_rows(args: argparse.Namespace) -> tuple[list[Any], str | None]:
    from tcpa_core.checkpoint import check_same_backbone
    from tcpa_viz.figures import CLUTTER_SUBJECT, clutter_rows, load_pair, load_run, rows_from_args

    loaded: dict[str, Any] = {}

    def get(path: str) -> Any:
        if path not in loaded:
            loaded[path] = load_run(path, backbone=args.backbone, backbone_weights=args.checkpoint)
        return loaded[path]

    demo_like = len(args.dataset) <= 1 and (not args.dataset or args.dataset[0] == "digits") and \
        len(args.baseline) <= 1 and len(args.tcpa) <= 1
    if demo_like:
        base = get(args.baseline[0]) if args.baseline else None
        tc = get(args.tcpa[0]) if args.tcpa else None
        pair = load_pair(base, tc, args.demo_dir)
        return clutter_rows(*pair, split=args.split), CLUTTER_SUBJECT
    for b, t in zip(args.baseline, args.tcpa, strict=False):
        check_same_backbone(get(b), get(t))
    rows = rows_from_args(args.dataset, args.data_root, [get(b) for b in args.baseline],
                          [get(t) for t in args.tcpa], split=args.split)
    return rows, None


def _run_figure(args: argparse.Namespace) -> int:
    from tcpa_core.train import check_writable_folder
    from tcpa_viz.figures import FIGURES, FIGURES_SUBDIR

    if not is_main_process():
        return 0
    check_writable_folder(Path(args.out) if args.out else Path(args.demo_dir) / FIGURES_SUBDIR, "--out")
    spec = FIGURES[args.number]
    options = {name: getattr(args, name) for name in spec.options}
    if spec.several_datasets:
        rows, subject = _figure6_rows(args)
        out = Path(args.out) if args.out else Path(args.demo_dir) / FIGURES_SUBDIR
        paths = spec.func(rows, out, demo_dir=args.demo_dir, subject=subject, **options)
    else:
        paths = spec.func(**_figure_inputs(args), **options)
    for path in paths:
        _say(f"wrote {path}")
    return 0


@command
def _figure_command(sub: argparse._SubParsersAction) -> None:
    from tcpa_viz.figures import FIGURES

    numbers = ", ".join(FIGURES)
    p = sub.add_parser("figure", help=f"regenerate paper figure {numbers} for a baseline and a TCPA checkpoint",
                       description=" ".join(f"Fig. {n}: {spec.summary}." for n, spec in FIGURES.items())
                       + " Each writes a PNG and an interactive HTML (the HTML files of a folder share one "
                         "offline copy of plotly.js).")
    p.add_argument("number", choices=tuple(FIGURES), help="figure number")
    _add_pair_args(p, several=True)
    g = p.add_argument_group("figure options")
    g.add_argument("--index", type=NON_NEGATIVE,
                   help="figures 1/3: sample to show (default: the first of the first 32 that both models classify "
                        "correctly)")
    g.add_argument("--layer", type=int, default=-1, help="figures 1/3: block whose attention is shown (default -1)")
    g.add_argument("--summary", metavar="FILE", type=_json_file,
                   help="figure 1: the demo's summary.json for the time/accuracy chart")
    g.add_argument("--max-samples", type=_whole(2), default=600,
                   help="figures 5/6: samples per t-SNE (default 600)")
    g.add_argument("--perplexity", type=_number(0.0, strict=True), default=30.0, help="figures 5/6: t-SNE perplexity")
    g.add_argument("--seed", type=NON_NEGATIVE, default=0, help="figures 5/6: seed of the sample subset and of t-SNE")
    p.set_defaults(func=_run_figure)


def _run_rank(args: argparse.Namespace) -> int:
    from tcpa_core.train import check_writable_folder
    from tcpa_viz.figures import FIGURES_SUBDIR, rank_report

    if not is_main_process():
        return 0
    check_writable_folder(Path(args.out) if args.out else Path(args.demo_dir) / FIGURES_SUBDIR, "--out")
    for path in rank_report(**_figure_inputs(args), num_images=args.num_images, seed=args.seed):
        _say(f"wrote {path}")
    return 0


@command
def _rank_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rank", help="attention rank per layer of a baseline and a TCPA checkpoint",
                       description="Measure the rank of every layer's attention (energy rank at tau 0.9/0.95/0.99, "
                                   "numerical, effective and stable rank) for the baseline and TCPA, after and "
                                   "before the TCPA mask, on a batch of images; writes rank.csv, rank.json and a "
                                   "rank-vs-layer plot (PNG + HTML).")
    _add_pair_args(p, several=False)
    p.add_argument("--num-images", type=POSITIVE, default=16, help="images measured (default 16)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the image subset")
    p.set_defaults(func=_run_rank)


def _dashboard_launcher() -> Callable[..., int]:
    """``launch`` of the dashboard package ``app`` (installed with tcpa-viz)."""
    try:
        from app.launch import launch
    except ImportError as exc:
        raise TCPAError(
            f"The dashboard package `app` cannot be imported ({exc}); reinstall tcpa-viz with "
            "`pip install -e .` from the repository root, or run `streamlit run app/dashboard.py` there."
        ) from exc
    return launch


def _run_app(args: argparse.Namespace) -> int:
    return int(_dashboard_launcher()(args.port, args.demo_dir, args.checkpoint, args.address) or 0)


@command
def _app_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="open the interactive dashboard (Streamlit)",
                       description="Start the dashboard; it lists the checkpoints of --demo-dir (default demo_out).")
    p.add_argument("--port", type=_whole(1, 65535),
                   help="port to serve on (default: Streamlit's, 8501 or the next free one)")
    p.add_argument("--address", help="address to listen on (default: Streamlit's)")
    p.add_argument("--demo-dir", metavar="DIR", help="folder whose checkpoints are listed (default demo_out)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH", help="an extra checkpoint to list")
    p.set_defaults(func=_run_app)


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    """The ``tcpa-viz`` parser with every registered sub-command."""
    parser = _Parser(prog="tcpa-viz", description="Token Coordinated Prompt Attention for timm ViTs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format="%(message)s", stream=sys.stderr)


def _error_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error raised in a DataLoader worker arrives with the worker's
    traceback in its text; only its last line (the original message, naming the file) is kept."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name, sep, message = last.partition(": ")
        text = f"{message if sep and '.' in name or name.endswith('Error') else last} (in a data loading worker)"
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tcpa-viz``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        configure_threads()
        init_distributed()
        _setup_logging()
        return int(args.func(args) or 0)
    except TCPAError as exc:
        print("error: " + _error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (training runs continue with --resume)", file=sys.stderr)
        return 130
    finally:
        cleanup_distributed()


from .commands import atlas, compare, explain  # noqa: E402,F401  (sub-commands register themselves)

if __name__ == "__main__":
    # run as `python -m tcpa_viz.cli`: sub-command modules registered into the importable tcpa_viz.cli
    from tcpa_viz.cli import main as _main

    sys.exit(_main())
