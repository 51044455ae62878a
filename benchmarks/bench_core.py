"""Speed and memory of the TCPA fast path against VPT-deep and the authors' dense formulation.

Usage: python benchmarks/bench_core.py [--model vit_base_patch16_224] [--batch 8] [--mem-batch 32]

All ratios are measured in this one run, on random weights (no download). Train step = forward +
backward through the frozen backbone into the prompts and head. Memory = peak resident memory added by
one train step, each variant in its own process (Linux: reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from tcpa_core import PromptConfig, build_model, capture
from tcpa_core.reference import reference_forward


def make_model(name: str, variant: str, cls_pool: int, image_pool: int, topk: int):
    if variant == "vpt-deep":
        cfg = PromptConfig(method="vpt-deep", num_prompts=cls_pool + image_pool, prompt_dropout=0.0)
    else:
        cfg = PromptConfig(method="tcpa", cls_pool_size=cls_pool, image_pool_size=image_pool, cls_topk=topk,
                           image_topk=topk, prompt_dropout=0.0)
    return build_model(name, cfg, num_classes=10).eval()


def step_fn(model, variant: str, images: torch.Tensor, labels: torch.Tensor):
    def step() -> None:
        if variant == "dense":
            logits, pool_loss = reference_forward(model, images, vectorised=True)
        else:
            logits, pool_loss = model(images, return_pool_loss=True)
        loss = torch.nn.functional.cross_entropy(logits, labels) + 0.01 * pool_loss
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def memory_child(args: argparse.Namespace) -> None:
    """Peak resident memory added by one train step. The high-water mark is reset first (Linux
    ``clear_refs``): a process started by ``exec`` otherwise inherits its parent's peak in ``ru_maxrss``."""
    torch.manual_seed(0)
    model = make_model(args.model, args.variant if args.variant != "dense" else "tcpa", args.cls_pool,
                       args.image_pool, args.topk)
    size = model.data_config["input_size"][1:]
    images, labels = torch.randn(args.mem_batch, 3, *size), torch.randint(0, 10, (args.mem_batch,))
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status_mib("VmRSS")
    step_fn(model, args.variant, images, labels)()
    print(json.dumps({"peak_added_mib": _status_mib("VmHWM") - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mem-batch", type=int, default=32)
    parser.add_argument("--cls-pool", type=int, default=18)
    parser.add_argument("--image-pool", type=int, default=18)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="tcpa", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return

    torch.manual_seed(0)
    tcpa = make_model(args.model, "tcpa", args.cls_pool, args.image_pool, args.topk)
    vpt = make_model(args.model, "vpt-deep", args.cls_pool, args.image_pool, args.topk)
    size = tcpa.data_config["input_size"][1:]
    images, labels = torch.randn(args.batch, 3, *size), torch.randint(0, 10, (args.batch,))

    with torch.no_grad():
        fast = tcpa(images)
        dense, _ = reference_forward(tcpa, images, vectorised=True)
    results = {"model": args.model, "batch": args.batch, "threads": args.threads,
               "prompts_per_block": (args.cls_pool + args.image_pool), "max_abs_logit_diff_vs_dense":
               (fast - dense).abs().max().item()}
    t_tcpa = timed(step_fn(tcpa, "tcpa", images, labels), args.repeats)
    t_vpt = timed(step_fn(vpt, "vpt-deep", images, labels), args.repeats)
    t_dense = timed(step_fn(tcpa, "dense", images, labels), args.repeats)

    def forward_plain() -> None:
        with torch.no_grad():
            tcpa(images)

    def forward_captured() -> None:
        with torch.no_grad(), capture(tcpa):
            tcpa(images)

    t_fwd = timed(forward_plain, args.repeats)
    t_cap = timed(forward_captured, args.repeats)
    results.update({
        "train_step_s": {"tcpa": t_tcpa, "vpt_deep": t_vpt, "dense": t_dense},
        "tcpa_over_vpt_deep": t_tcpa / t_vpt,
        "tcpa_over_dense": t_tcpa / t_dense,
        "forward_s": {"plain": t_fwd, "captured": t_cap},
        "capture_over_plain": t_cap / t_fwd,
    })
    if not args.skip_memory:
        peaks = {}
        for variant in ("tcpa", "dense"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", "--variant", variant, "--model", args.model,
                 "--mem-batch", str(args.mem_batch), "--threads", str(args.threads), "--cls-pool",
                 str(args.cls_pool), "--image-pool", str(args.image_pool), "--topk", str(args.topk)],
                check=True, capture_output=True, text=True,
            )
            peaks[variant] = json.loads(out.stdout.strip().splitlines()[-1])["peak_added_mib"]
        results.update({f"peak_train_mib_batch{args.mem_batch}": peaks,
                        "tcpa_over_dense_memory": peaks["tcpa"] / peaks["dense"]})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
