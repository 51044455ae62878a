"""Benchmark: ``tcpa_viz.explain`` and ``tcpa_viz.faithfulness`` on the demo checkpoints (not a timed test).

Bars (2 CPU cores): ``relevance`` for 32 demo test images <= 2 s (one call, batch 32, after a warm-up call);
``faithfulness`` of the relevance explanations over the whole demo test split <= 60 s (deletion + insertion
with ``--steps`` steps (default 8) and the random-order baseline, blur fill, batches of ``--batch-size``
perturbed images; the explanations carry the logits, so the unperturbed images are not scored again).
Every method's explain time for the 32 images is reported too (``--methods``), and ``--demo-part`` times the
demo's explain step (:func:`tcpa_viz.run_demo_explain`, budget about 15 s).

Each timing is given as wall seconds and as process CPU seconds (``time.process_time``, all threads): on a
shared, loaded machine the wall time scales with the load while CPU seconds / threads approximates the wall
time on idle cores (still pessimistic: contention slows every thread), so the bars are checked on
CPU seconds / ``--threads``. The 1-minute load average is printed too. To read a loaded run, one plain forward
pass over the test split (``forward_test_split``, same batch size) is timed beside the faithfulness, which
needs ``3 (steps - 1) + 1`` such passes (printed as ``faithfulness_forward_passes``) plus the fills; their
ratio (``faithfulness_over_forward``) is measured in one run.

    python benchmarks/bench_explain.py [--demo-dir DIR] [--threads 2] [--steps 8] [--batch-size 128]
                                       [--models tcpa,vpt-deep] [--methods relevance,...] [--demo-part]
                                       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

RELEVANCE_BAR_SECONDS = 2.0
FAITHFULNESS_BAR_SECONDS = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", default="demo_out", help="folder with <method>/best checkpoints")
    parser.add_argument("--models", default="tcpa,vpt-deep", help="comma-separated run folders of --demo-dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-images", type=int, default=32, help="images of the explain timings")
    parser.add_argument("--methods", default=None, help="comma-separated explainers to time (default: all)")
    parser.add_argument("--skip-faithfulness", action="store_true")
    parser.add_argument("--demo-part", action="store_true", help="also time run_demo_explain on --demo-dir")
    parser.add_argument("--json", default=None, help="also write the timings to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tcpa_viz.explainers import explain, faithfulness, list_explainers
    from tcpa_viz.explainers.report import concat_explanations, input_boxes
    from tcpa_viz.figures.common import ModelInputs, resolve_data
    from tcpa_viz.models import load_run

    results: dict[str, dict[str, float]] = {}
    ok = True
    if args.demo_part:
        from tcpa_viz.explainers.report import run_demo_explain

        with tempfile.TemporaryDirectory() as out:
            start, cpu = time.perf_counter(), time.process_time()
            run_demo_explain(None, None, None, out, demo_dir=args.demo_dir)
            results["demo_part"] = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
                                    "load": os.getloadavg()[0]}
        print("demo explain part: " + ", ".join(f"{k} {v:.1f}" for k, v in results["demo_part"].items()))
    for name in args.models.split(","):
        loaded = load_run(Path(args.demo_dir) / name)
        model = loaded.model
        data = resolve_data(None, loaded, "test")
        all_images = ModelInputs(data, model).batch()
        images = all_images[:args.num_images]
        row: dict[str, float] = {"load_before": os.getloadavg()[0], "test_images": float(len(all_images))}
        for method in args.methods.split(",") if args.methods else list_explainers():
            options = {"n_steps": 32} if method == "integrated-gradients" else {}
            explain(model, images[:2], method=method, **options)
            start, cpu = time.perf_counter(), time.process_time()
            explain(model, images, method=method, **options)
            row[f"explain_{method}_s"] = time.perf_counter() - start
            row[f"explain_{method}_cpu_s"] = time.process_time() - cpu
            print(f"  {loaded.label} {method} (32 images): {row[f'explain_{method}_s']:.2f} s wall, "
                  f"{row[f'explain_{method}_cpu_s']:.2f} s CPU", flush=True)
        print(f"{loaded.label}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
        if "explain_relevance_cpu_s" in row:
            ok &= row["explain_relevance_cpu_s"] / args.threads <= RELEVANCE_BAR_SECONDS
        if not args.skip_faithfulness:
            start, cpu = time.perf_counter(), time.process_time()
            explanations = concat_explanations([explain(model, all_images[i:i + 32])
                                                for i in range(0, len(all_images), 32)])
            row["relevance_test_split_s"] = time.perf_counter() - start
            row["relevance_test_split_cpu_s"] = time.process_time() - cpu
            boxes = input_boxes(data, range(len(data)), model)
            start, cpu = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                for i in range(0, len(all_images), args.batch_size):
                    model(all_images[i:i + args.batch_size])
            row["forward_test_split_s"] = time.perf_counter() - start
            row["forward_test_split_cpu_s"] = time.process_time() - cpu
            start, cpu = time.perf_counter(), time.process_time()
            result = faithfulness(model, all_images, explanations, boxes=boxes, steps=args.steps,
                                  batch_size=args.batch_size)
            row["faithfulness_test_split_s"] = time.perf_counter() - start
            row["faithfulness_test_split_cpu_s"] = time.process_time() - cpu
            row["faithfulness_forward_passes"] = float(3 * (args.steps - 1) + 1)
            row["faithfulness_over_forward"] = row["faithfulness_test_split_cpu_s"] / row["forward_test_split_cpu_s"]
            row.update(result.summary())
            ok &= row["faithfulness_test_split_cpu_s"] / args.threads <= FAITHFULNESS_BAR_SECONDS
        row["load_after"] = os.getloadavg()[0]
        results[loaded.label] = row
        print(f"{loaded.label}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    print(f"bars (CPU s / {args.threads} threads): relevance(32) <= {RELEVANCE_BAR_SECONDS} s, "
          f"faithfulness(test split) <= {FAITHFULNESS_BAR_SECONDS} s: {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "steps": args.steps, "results": results},
                                              indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
