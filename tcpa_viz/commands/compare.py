"""``tcpa-viz compare``: every method on the same data and backbone, lr chosen on val, several seeds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tcpa_core.config import PromptConfig
from tcpa_core.data import dataset_size
from tcpa_core.distributed import is_main_process
from tcpa_core.errors import DatasetError
from tcpa_core.model import PromptedViT

from ..cli import (
    _add_backbone_args,
    _add_data_args,
    _add_prompt_args,
    _add_train_args,
    _backbone_source,
    _build_model,
    _dataset_spec,
    _given,
    _open_split,
    _say,
    _set_transform,
    _train_config,
    _transforms,
    command,
)

_PROMPT_SIZES = ("cls_pool_size", "image_pool_size", "cls_topk", "image_topk", "prompt_length", "num_prompts",
                 "fourier_fraction", "prompt_dropout")


def _csv_of(kind: type, text: str) -> list[Any]:
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r} ({exc})") from exc
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return values


def _methods(text: str) -> list[str]:
    from ..compare import method_names

    methods = _csv_of(str, text)
    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(method_names())}")
    return methods


def _grid(args: argparse.Namespace) -> tuple[list[float], list[int]]:
    from ..compare import DEFAULT_LRS, CompareError

    if args.lr is not None and args.lrs is not None:
        raise CompareError("Give the learning rates with --lrs only (--lr is a one-value grid).")
    if args.seed is not None and args.seeds is not None:
        raise CompareError("Give the seeds with --seeds only (--seed is a single seed).")
    lrs = args.lrs or ([args.lr] if args.lr is not None else list(DEFAULT_LRS))
    seeds = args.seeds or ([args.seed] if args.seed is not None else [0, 1, 2])
    return lrs, seeds


def _run_compare(args: argparse.Namespace) -> int:
    from ..compare import CompareConfig, CompareData, compare, method_prompt_config

    lrs, seeds = _grid(args)
    cfg = CompareConfig(methods=args.methods, seeds=seeds, lrs=lrs, train=_train_config(args),
                        prompt=_given(args, _PROMPT_SIZES), bootstrap_samples=args.bootstrap_samples,
                        force=args.force)
    spec = _dataset_spec(args)
    train_set = _open_split(spec, "train", None)
    classes = list(getattr(train_set, "classes", []))
    if not classes:
        raise DatasetError(f"Dataset {args.dataset!r} reports no classes.")
    source = _backbone_source(args)

    def factory(prompt: PromptConfig) -> PromptedViT:
        return _build_model(source, prompt, len(classes))

    probe = factory(method_prompt_config(cfg.methods[0], cfg.prompt))
    train_tf, eval_tf = _transforms(probe, args.dataset, not args.no_augment)
    del probe
    data = CompareData(train=_set_transform(train_set, train_tf), val=_open_split(spec, "val", eval_tf),
                       test=_open_split(spec, "test", eval_tf),
                       meta={"dataset": spec, "class_names": classes, "backbone_source": source})
    out = Path(args.out)
    sizes = [dataset_size(split) for split in (data.train, data.val, data.test)]
    _say(f"comparing {', '.join(cfg.methods)} on {args.dataset} ({sizes[0]} train / {sizes[1]} val / "
         f"{sizes[2]} test images) with backbone {source['name']}: seeds {', '.join(map(str, cfg.seeds))}, "
         f"lr grid {', '.join(f'{lr:g}' for lr in cfg.lrs)} at seed {cfg.seeds[0]}; outputs in {out}")
    records, summary = compare(factory, data, cfg, out, log=_say)
    trained = sum(r.trained for r in records)
    _say(f"{len(records)} runs: {trained} trained, {len(records) - trained} reused")
    for info in summary["methods"].values():
        std = f" ± {100 * info['test_acc_std']:.2f}" if info["test_acc_std"] is not None else ""
        _say(f"  {info['display_name']:>10}: lr {info['lr']:g}, test {100 * info['test_acc_mean']:.2f}{std}%, "
             f"{info['seconds_per_epoch_mean']:.1f} s/epoch")
    for pair in summary["pairs"]:
        _say(f"  {pair['label']}: {100 * pair['difference']:+.2f} pp, {round(100 * pair['confidence'])}% CI "
             f"[{100 * pair['low']:+.2f}, {100 * pair['high']:+.2f}]")
    if not args.no_figures and is_main_process():
        _write_figures(out, cfg, summary)
    _say(f"wrote {out / 'compare.csv'}, {out / 'compare_summary.json'}, {out / 'compare_summary.md'}")
    return 0


def _figure_pair(methods: list[str]) -> tuple[str, str] | None:
    """Baseline and TCPA method whose seed-0 checkpoints Fig. 1's attention rows show."""
    from ..compare import method_role

    baseline = "vpt-deep" if "vpt-deep" in methods else next((m for m in methods if method_role(m) == "baseline"), None)
    tcpa = "tcpa" if "tcpa" in methods else next((m for m in methods if method_role(m) == "tcpa"), None)
    return (baseline, tcpa) if baseline and tcpa else None


def _write_figures(out: Path, cfg: Any, summary: dict[str, Any]) -> None:
    from ..compare import COMPARE_CSV, run_dir_for
    from ..figures import FIGURES_SUBDIR
    from ..figures.compare_panel import write_table3
    from ..figures.figure1 import figure1

    figures = out / FIGURES_SUBDIR
    paths = write_table3(summary, figures)
    pair = _figure_pair(list(summary["methods"]))
    if pair is not None:
        seed = cfg.seeds[0]
        dirs = [run_dir_for(out, m, summary["methods"][m]["lr"], seed) / "best" for m in pair]
        paths += figure1(dirs[0], dirs[1], figures, compare=out / COMPARE_CSV)
    for path in paths:
        _say(f"wrote {path}")


@command
def _compare_command(sub: argparse._SubParsersAction) -> None:
    from ..compare import DEFAULT_LRS, DEFAULT_METHODS

    p = sub.add_parser(
        "compare", help="train every method on the same data and backbone, lr chosen on val, several seeds",
        description="Per method: train at the first seed once per learning rate of --lrs, keep the lr with the best "
                    "validation accuracy, train the other seeds at that lr, evaluate those runs on the test split. "
                    "Writes compare.csv, compare_summary.json/.md (mean ± std over seeds, paired bootstrap CIs of "
                    "each +TCPA method against its base) and figures/ (Table 3 style chart, Fig. 1 with every "
                    "method). Finished runs are reused; interrupted ones resume.")
    _add_backbone_args(p)
    _add_data_args(p)
    _add_prompt_args(p, choose_method=False)
    _add_train_args(p)
    g = p.add_argument_group("comparison")
    g.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS),
                   help=f"comma-separated methods (default {','.join(DEFAULT_METHODS)})")
    g.add_argument("--seeds", type=lambda t: _csv_of(int, t), help="comma-separated seeds; the first selects the lr "
                                                                   "(default 0,1,2)")
    g.add_argument("--lrs", type=lambda t: _csv_of(float, t),
                   help=f"learning-rate grid (default {','.join(f'{lr:g}' for lr in DEFAULT_LRS)})")
    g.add_argument("--bootstrap-samples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    g.add_argument("--out", default="runs/compare", metavar="DIR", help="output folder (default runs/compare)")
    g.add_argument("--force", action="store_true", help="retrain runs even when finished ones exist")
    g.add_argument("--no-figures", action="store_true", help="skip figures/ (Table 3 chart and Fig. 1)")
    p.set_defaults(func=_run_compare)
