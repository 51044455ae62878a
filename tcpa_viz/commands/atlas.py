"""``tcpa-viz atlas`` (dataset-level prompt selection) and ``tcpa-viz ablate`` (causal prompt importance).

Both take a TCPA checkpoint (``--model``), a dataset split (default: the test split of the dataset the
checkpoint was trained on) and ``--out``; the files are listed in :mod:`tcpa_viz.atlas.outputs`.
Under ``torchrun`` every rank counts its shard and rank 0 writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tcpa_core.distributed import is_main_process
from tcpa_core.errors import DatasetError

from ..cli import _add_data_args, _dataset_spec, _open_split, _say, _transforms, comma_choices, command
from ..models import resolve_checkpoint


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from tcpa_core.checkpoint import load_checkpoint, read_checkpoint_meta
    from tcpa_core.train import resolve_device

    path = resolve_checkpoint(args.model)
    meta = read_checkpoint_meta(path)
    model = load_checkpoint(path, device=resolve_device(args.device or "auto")).eval()
    if args.dataset:
        spec = _dataset_spec(args)
    elif meta.get("dataset"):
        spec = {**meta["dataset"], "max_samples": args.max_samples}
    else:
        raise DatasetError("This checkpoint does not record its dataset; pass --dataset (and --data-root).")
    _, eval_tf = _transforms(model, spec["name"], augment=False)
    return model, _open_split(spec, args.split, eval_tf)


def _formats(text: str) -> list[str]:
    return comma_choices(text.lower(), ("png", "pdf", "svg", "html"), "figure format(s)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR",
                   help="TCPA checkpoint folder, or a `tcpa-viz train --out` folder (uses its best/)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="cpu, cuda, ... (default: auto)")
    p.add_argument("--formats", type=_formats, default=["png", "html"],
                   help="figure formats, comma-separated (png, pdf, svg, html; default png,html)")
    p.add_argument("--no-progress", action="store_true")
    _add_data_args(p, default=None)


def _run_atlas(args: argparse.Namespace) -> int:
    from ..atlas import prompt_atlas
    from ..atlas.outputs import write_atlas

    model, data = _load(args)
    atlas = prompt_atlas(model, data, args.batch_size, layers=args.layers, num_workers=args.num_workers,
                         progress=not args.no_progress, gallery_size=args.gallery_size,
                         num_shuffles=args.shuffles, seed=args.seed)
    if is_main_process():
        paths = write_atlas(atlas, args.out, model, data, figure_layers=args.figure_layers, formats=args.formats)
        for note in atlas.notes:
            _say(f"note: {note}")
        for line in atlas.collapse_messages():
            _say(line)
        _say(f"wrote {len(paths)} files to {Path(args.out)} (usage.csv, atlas.json, figures)")
    return 0


def _run_ablate(args: argparse.Namespace) -> int:
    from ..atlas import prompt_importance
    from ..atlas.outputs import write_ablation

    model, data = _load(args)
    result = prompt_importance(model, data, layers=args.layers, modes=args.modes, batch_size=args.batch_size,
                               num_workers=args.num_workers, progress=not args.no_progress, seed=args.seed)
    if is_main_process():
        paths = write_ablation(result, args.out, formats=args.formats)
        _say(f"accuracy with top-k selection {100 * result.base_accuracy:.2f}%; " + ", ".join(
            f"{r['mode']} {100 * r['accuracy']:.2f}%" for r in result.rules()))
        for r in result.ranking("mask" if "mask" in args.modes else args.modes[0], 5):
            _say(f"  block {r['layer']} {r['pool']} entry {r['entry']} ({r['mode']}): accuracy "
                 f"{100 * r['delta_accuracy']:+.2f} points, true-class logit {r['delta_true_logit']:+.3f}")
        _say(f"wrote {len(paths)} files to {Path(args.out)} (ablation.csv, importance figure)")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices like 0,3,-1, got {text!r}") from exc


def _mode_list(text: str) -> list[str]:
    return comma_choices(text, ("mask", "remove"), "mode(s)")


@command
def _atlas_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("atlas", help="which prompts every token selects across a dataset split (TCPA)",
                       description="Stream a dataset split through a TCPA checkpoint and count, per block and pool "
                                   "entry, how often it is selected (any rank, top-1, rank-weighted), by class, on "
                                   "object vs background patches, where, with what; diagnose selection collapse. "
                                   "Writes usage.csv, atlas.json, gallery.npz and figures.")
    _common(p)
    p.add_argument("--layers", type=_int_list, help="blocks to analyse, e.g. 0,5 or -1 (default all)")
    p.add_argument("--figure-layers", type=_int_list, help="blocks with spatial-map and gallery figures (default all)")
    p.add_argument("--gallery-size", type=int, default=8, help="top-N tokens per entry in the gallery (default 8)")
    p.add_argument("--shuffles", type=int, default=5, help="label shuffles for the NMI chance levels (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_atlas)


@command
def _ablate_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="accuracy when each prompt entry is masked/removed, and per selection rule",
                       description="For every block x pool x entry: accuracy and true-class logit change when the "
                                   "entry is masked (key column 0 in the mask) or removed (leaves the pool); and the "
                                   "accuracy with random / shared / all selection. Writes ablation.csv and figures.")
    _common(p)
    p.add_argument("--layers", type=_int_list, help="blocks whose entries are ablated (default all)")
    p.add_argument("--modes", type=_mode_list, default=["mask", "remove"], help="mask,remove (default both)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random selection rule")
    p.set_defaults(func=_run_ablate)
