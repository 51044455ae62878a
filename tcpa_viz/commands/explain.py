"""``tcpa-viz explain``: attributions of a baseline and a TCPA checkpoint, their faithfulness and figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import _say, comma_choices, command
from ..explainers import list_explainers
from ..explainers.report import ExplainSettings, explain_report


def _methods(text: str) -> tuple[str, ...]:
    return tuple(comma_choices(text, list_explainers(), "method(s)"))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _run_explain(args: argparse.Namespace) -> int:
    from tcpa_core.data import dataset_size
    from tcpa_core.distributed import is_main_process

    from ..figures.common import DataSpec, resolve_data
    from ..models import load_run

    if not is_main_process():
        return 0
    models = [load_run(path, backbone=args.backbone, backbone_weights=args.checkpoint)
              for path in ([args.baseline] if args.baseline else []) + [args.model]]
    if len(models) == 2 and models[0].label == models[1].label:
        models[0].label = f"{models[0].label} (baseline)"
    spec = DataSpec(name=args.dataset, root=args.data_root, split=args.split) if args.dataset else None
    data = resolve_data(spec, models[-1], args.split)
    settings = ExplainSettings(methods=args.methods, num_images=args.num_images, steps=args.steps, fill=args.fill,
                               ig_steps=args.ig_steps, batch_size=args.batch_size, seed=args.seed)
    _say(f"explaining {', '.join(m.label for m in models)} with {', '.join(args.methods)} on "
         f"{min(args.num_images, dataset_size(data))} images of {data.__class__.__name__}/{args.split} -> {args.out}")
    for path in explain_report(models, data, Path(args.out), settings, log=lambda line: _say(f"  {line}")):
        _say(f"wrote {path}")
    return 0


@command
def _explain_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="attributions of a checkpoint (and a baseline) with measured faithfulness",
                       description="Explain the predicted class of test images with every method (relevance, "
                                   "rollout, attention, integrated-gradients), score deletion/insertion AUC "
                                   "beside a random patch order, the pointing game and the relevance inside the "
                                   "object box (datasets with boxes); writes faithfulness.csv/json and figures.")
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint folder (the TCPA model)")
    p.add_argument("--baseline", metavar="DIR", help="a baseline checkpoint folder shown beside it")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--methods", type=_methods, default=tuple(list_explainers()),
                   help=f"comma-separated methods (default {','.join(list_explainers())})")
    p.add_argument("--num-images", type=_positive, default=64, help="images explained (seeded subset; default 64)")
    p.add_argument("--steps", type=_positive, default=8, help="deletion/insertion steps (default 8)")
    p.add_argument("--fill", choices=("blur", "mean"), default="blur",
                   help="what removed patches become: a blur of the image or the images' mean colour")
    p.add_argument("--ig-steps", type=_positive, default=32, help="integration points of integrated gradients")
    p.add_argument("--batch-size", type=_positive, default=128, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset and of the random order")
    p.add_argument("--dataset", metavar="NAME", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--data-root", metavar="DIR", help="folder of --dataset")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--backbone", metavar="NAME", help="rebuild the backbone from this timm name")
    p.add_argument("--checkpoint", metavar="FILE", help="backbone weights to use instead of the recorded ones")
    p.set_defaults(func=_run_explain)
