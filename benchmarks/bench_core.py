"""Core benchmark: TCPA's train step against the floor, the authors' dense pattern and VPT-deep.

Usage:
    python benchmarks/bench_core.py                      # ViT-B/16, batch 8, 2 threads, memory at batch 32
    python benchmarks/bench_core.py --quick              # tiny ViT, a few seconds (smoke test)
    python benchmarks/bench_core.py --authors-repo DIR --device cuda   # also the authors' released model code

Every variant runs on the same random-weight backbone (no download). A train step is: forward, cross
entropy (+ 0.01 x pool loss), backward into the trainable parameters, zero_grad. Variants:

* ``tcpa``: ``PromptedViT`` method ``tcpa`` (the fast path, ``tcpa_core/attention.py``).
* ``dense``: the authors' computational pattern, vectorised (``benchmarks/dense_pattern.py``): prompts are
  queries too, full ``[B, H, S, S]`` softmax, dense per-head float mask built by scatter, ``A * M``.
* ``floor``: what any prompt method must at least pay: the frozen backbone without prompts; the embedded
  tokens (patch embedding + position embedding, computed without grad) require grad, all blocks (timm's own
  ``Block.forward``) + final norm + head, cross entropy, backward down to the tokens.
* ``vpt-deep``: VPT-deep with as many prompts per block as TCPA's two pools hold.
* ``authors`` (only with ``--authors-repo``): their ``Model_VFPT_TCPA``, imported from DIR at run time.

Before anything is timed, the dense pattern's (and the authors' model's) logits must equal TCPA's within
1e-4 (eval mode, no prompt dropout). Timings are interleaved: after one warm-up call each, every round runs
each variant once, the order rotated per round, so slow phases of a shared machine hit all variants alike;
ratios are of the per-variant minimum over rounds (the median is reported too). Peak memory: each variant
in its own child process, the peak resident memory added by one train step at ``--mem-batch`` (Linux
``VmHWM`` after resetting it through ``/proc/self/clear_refs``; on CUDA ``max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from tcpa_core import PromptConfig, PromptedViT, build_model, capture

if __package__:
    from .authors_code import AuthorsCodeError, check_authors_repo, load_authors_model
    from .dense_pattern import dense_pattern_forward
else:
    from authors_code import AuthorsCodeError, check_authors_repo, load_authors_model
    from dense_pattern import dense_pattern_forward

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
QUICK = dict(model="tiny", batch=2, mem_batch=4, repeats=2, cls_pool=6, image_pool=6, topk=3)
TARGETS = {  # ratio name -> upper bound (issue 12 part 7, DESIGN.md section 4)
    "time tcpa/floor": 1.10,
    "time tcpa/dense": 0.75,
    "memory tcpa/dense": 0.55,
    "time tcpa/vpt-deep": 1.0,
    "time capture/plain": 1.5,
}
EQUALITY_TOLERANCE = 1e-4
CHECKS: dict[str, float] = {}  # what was checked against TCPA -> max |logit difference|


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (one line says why)."""


def make_model(args: argparse.Namespace, method: str, fourier: bool = False) -> PromptedViT:
    """The benchmark model (seed 0, so every variant gets the same backbone weights), eval mode."""
    torch.manual_seed(0)
    if method == "vpt-deep":
        cfg = PromptConfig(method="vpt-deep", num_prompts=args.cls_pool + args.image_pool, prompt_dropout=0.0)
    else:
        cfg = PromptConfig(method="tcpa", cls_pool_size=args.cls_pool, image_pool_size=args.image_pool,
                           cls_topk=args.topk, image_topk=args.topk, fourier=fourier, prompt_dropout=0.0)
    backbone: str | VisionTransformer = args.model
    if args.model == "tiny":
        backbone = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10)
    return build_model(backbone, cfg, num_classes=10).to(args.device).eval()


def batch(model: PromptedViT, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(size, *model.data_config["input_size"], generator=generator)
    return images.to(device), torch.randint(0, 10, (size,), generator=generator).to(device)


def floor_forward(model: PromptedViT) -> Forward:
    """The floor: no prompts; the embedded tokens require grad; timm's blocks, final norm and head."""
    bb = model.backbone

    def forward(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            tokens = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(images))))
        x = tokens.requires_grad_(True)
        for block in bb.blocks:
            x = block(x)
        return model.head(bb.forward_head(bb.norm(x), pre_logits=True)), x.new_zeros(())

    return forward


def train_step(forward: Forward, owner: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        logits, pool_loss = forward(images)
        (F.cross_entropy(logits, labels) + 0.01 * pool_loss).backward()
        owner.zero_grad(set_to_none=True)

    return step


def variant_steps(args: argparse.Namespace, names: list[str], tcpa: PromptedViT, images: torch.Tensor,
                  labels: torch.Tensor) -> dict[str, Callable[[], None]]:
    """Train-step callables of the named variants on ``images``, after checking that the dense pattern (and
    the authors' model) compute the logits of ``tcpa``."""
    device = torch.device(args.device)
    steps: dict[str, Callable[[], None]] = {}
    for name in names:
        if name == "tcpa":
            steps[name] = train_step(lambda im: tcpa(im, return_pool_loss=True), tcpa, images, labels)
        elif name == "dense":
            check_equal("dense pattern", lambda im: dense_pattern_forward(tcpa, im), tcpa, images)
            steps[name] = train_step(lambda im: dense_pattern_forward(tcpa, im), tcpa, images, labels)
        elif name == "floor":
            steps[name] = train_step(floor_forward(tcpa), tcpa, images, labels)
        elif name == "vpt-deep":
            vpt = make_model(args, "vpt-deep")
            steps[name] = train_step(lambda im, vpt=vpt: (vpt(im), im.new_zeros(())), vpt, images, labels)
        elif name == "authors":
            authors = load_authors_model(Path(args.authors_repo), tcpa, device)
            twin = make_model(args, "tcpa", fourier=True)  # their released model is VFPT+TCPA
            twin.load_trainable_state_dict(tcpa.trainable_state_dict())
            check_equal("authors' Model_VFPT_TCPA", authors, twin, images)
            steps[name] = train_step(authors, authors, images, labels)
        else:
            raise BenchError(f"unknown variant {name!r}")
    return steps


def check_equal(what: str, forward: Forward, tcpa: PromptedViT, images: torch.Tensor) -> float:
    """Largest |logit difference| between ``forward`` and ``tcpa``; BenchError beyond the tolerance."""
    with torch.no_grad():
        expected, expected_loss = tcpa(images, return_pool_loss=True)
        logits, loss = forward(images)
    diff = (logits - expected).abs().max().item()
    loss_diff = abs(loss.item() - expected_loss.item())
    if not diff <= EQUALITY_TOLERANCE or not loss_diff <= EQUALITY_TOLERANCE:
        raise BenchError(f"the {what} does not compute TCPA: max |logit diff| {diff:.3g}, pool loss diff "
                         f"{loss_diff:.3g} (tolerance {EQUALITY_TOLERANCE}); fix it before timing")
    CHECKS[what] = diff
    return diff


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function: one warm-up call each, then ``repeats`` rounds, each calling every
    function once in an order rotated by one per round."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"{field} missing from /proc/self/status (peak memory needs Linux; use --skip-memory)")


def memory_child(args: argparse.Namespace) -> None:
    """Peak memory added by one train step of ``args.variant`` (printed as JSON). On CPU the high-water mark
    is reset first (Linux ``clear_refs``): a process started by ``exec`` otherwise inherits its parent's
    peak in ``ru_maxrss``."""
    device = torch.device(args.device)
    tcpa = make_model(args, "tcpa")
    images, labels = batch(tcpa, args.mem_batch, device)
    step = variant_steps(args, [args.variant], tcpa, images, labels)[args.variant]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = _status_mib("VmRSS")
        step()
        peak = _status_mib("VmHWM") - before
    print(json.dumps({"peak_added_mib": peak}))


def measure_memory(args: argparse.Namespace, variant: str) -> float:
    """Run :func:`memory_child` for one variant in a fresh interpreter (one at a time)."""
    command = [sys.executable, __file__, "--memory-child", "--variant", variant]
    for option in ("model", "mem_batch", "threads", "cls_pool", "image_pool", "topk", "device", "authors_repo"):
        value = getattr(args, option)
        if value is not None:
            command += ["--" + option.replace("_", "-"), str(value)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise BenchError(f"memory run of {variant!r} failed: {last}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_added_mib"])


def summary(times: list[float]) -> dict[str, float | list[float]]:
    return {"min": min(times), "median": statistics.median(times), "all": [round(t, 4) for t in times]}


def ratio(times: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    return {"min": min(times[a]) / min(times[b]),
            "median": statistics.median(times[a]) / statistics.median(times[b])}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    names = ["tcpa", "dense", "floor", "vpt-deep"] + (["authors"] if args.authors_repo else [])
    tcpa = make_model(args, "tcpa")
    if args.authors_repo:
        check_authors_repo(Path(args.authors_repo).resolve(), tcpa, device)
    images, labels = batch(tcpa, args.batch, device)
    fns = variant_steps(args, names, tcpa, images, labels)

    def forward_plain() -> None:
        with torch.no_grad():
            tcpa(images)

    def forward_captured() -> None:
        with torch.no_grad(), capture(tcpa):
            tcpa(images)

    fns.update({"forward": forward_plain, "forward+capture": forward_captured})
    times = interleaved(fns, args.repeats, device)
    ratios = {"time tcpa/floor": ratio(times, "tcpa", "floor"), "time tcpa/dense": ratio(times, "tcpa", "dense"),
              "time dense/floor": ratio(times, "dense", "floor"),
              "time tcpa/vpt-deep": ratio(times, "tcpa", "vpt-deep"),
              "time capture/plain": ratio(times, "forward+capture", "forward")}
    if args.authors_repo:
        ratios.update({"time tcpa/authors": ratio(times, "tcpa", "authors"),
                       "time dense/authors": ratio(times, "dense", "authors"),
                       "time authors/floor": ratio(times, "authors", "floor")})
    results: dict = {
        "model": args.model, "device": args.device, "threads": torch.get_num_threads(), "batch": args.batch,
        "repeats": args.repeats, "pools": [args.cls_pool, args.image_pool], "topk": args.topk,
        "max_abs_logit_diff": dict(CHECKS),
        "seconds": {name: summary(t) for name, t in times.items()},
        "ratios": {name: {k: round(v, 4) for k, v in r.items()} for name, r in ratios.items()},
    }
    if not args.skip_memory:
        peaks = {variant: measure_memory(args, variant) for variant in ["tcpa", "dense", "floor"] +
                 (["authors"] if args.authors_repo else [])}
        results["mem_batch"] = args.mem_batch
        results["peak_train_mib"] = {k: round(v, 1) for k, v in peaks.items()}
        results["ratios"]["memory tcpa/dense"] = {"value": round(peaks["tcpa"] / peaks["dense"], 4)}
        results["ratios"]["memory tcpa/floor"] = {"value": round(peaks["tcpa"] / peaks["floor"], 4)}
        if args.authors_repo:
            results["ratios"]["memory tcpa/authors"] = {"value": round(peaks["tcpa"] / peaks["authors"], 4)}
    results["targets"] = {
        name: {"value": results["ratios"][name].get("min", results["ratios"][name].get("value")), "target": bound,
               "met": results["ratios"][name].get("min", results["ratios"][name].get("value")) <= bound}
        for name, bound in TARGETS.items() if name in results["ratios"]
    }
    return results


def table(results: dict) -> str:
    """The results as a markdown table (ratios: per-variant minimum over rounds; median in brackets)."""
    lines = ["| measure | result | target |", "|---|---|---|"]
    for name, value in results["ratios"].items():
        shown = f"{value['min']:.3f} (median {value['median']:.3f})" if "min" in value else f"{value['value']:.3f}"
        bound = TARGETS.get(name)
        lines.append(f"| {name} | {shown} | {'<= ' + str(bound) if bound else ''} |")
    for name, value in results["seconds"].items():
        lines.append(f"| seconds {name} | {value['min']:.3f} (median {value['median']:.3f}) | |")
    for name, value in results.get("peak_train_mib", {}).items():
        lines.append(f"| peak train MiB at batch {results['mem_batch']}, {name} | {value:.0f} | |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm ViT name, or 'tiny'")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mem-batch", type=int, default=32)
    parser.add_argument("--cls-pool", type=int, default=18)
    parser.add_argument("--image-pool", type=int, default=18)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny ViT, batch 2, two rounds: a smoke test")
    parser.add_argument("--authors-repo", default=None, metavar="DIR",
                        help="local copy of the authors' repository: also time their model code (needs CUDA)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="tcpa", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.memory_child:
            memory_child(args)
            return 0
        results = run(args)
    except (BenchError, AuthorsCodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    print(table(results), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
