"""Benchmark of the prompt atlas and of the single-entry ablations (not a test; numbers go to the README).

Measures, in one run on the current machine:

1. ``prompt_atlas`` over the demo test split (360 images, every block), and one plain forward pass over the
   same images for comparison (target: atlas <= 10 s on 2 cores);
2. ``prompt_importance`` with every single-entry ablation of every block (blocks x 2 pools x entries x
   {mask, remove}) and the three selection rules (target <= 120 s on 2 cores), and the demo's part (last
   block only);
3. peak memory (``VmHWM``) of ``prompt_atlas`` on 1k and on 10k synthetic images, each in a fresh process, so
   that the difference shows what grows with the dataset (target: flat).

Usage: ``python benchmarks/bench_atlas.py [--model DIR] [--skip-ablations] [--json FILE]`` (default model:
``demo_out/tcpa/best``). The load average is printed with the timings: on a shared machine they are upper
bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset


class SyntheticImages(Dataset):
    """``n`` random images ``[3, size, size]`` with labels, generated on the fly from the index (no storage)."""

    def __init__(self, n: int, size: int, num_classes: int) -> None:
        self.n, self.size, self.num_classes = n, size, num_classes
        self.targets = [i % num_classes for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, self.size, self.size, generator=g), self.targets[i]


def _vmhwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def _memory_child(model_dir: str, n: int) -> None:
    from tcpa_core import load_checkpoint
    from tcpa_viz.atlas import prompt_atlas

    model = load_checkpoint(model_dir).eval()
    size = model.data_config["input_size"][-1]
    before = _vmhwm_kib()
    start = time.perf_counter()
    prompt_atlas(model, SyntheticImages(n, size, model.num_classes), batch_size=64, progress=False)
    print(json.dumps({"images": n, "vmhwm_before_kib": before, "vmhwm_kib": _vmhwm_kib(),
                      "seconds": time.perf_counter() - start}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo_out/tcpa/best")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-ablations", action="store_true")
    parser.add_argument("--memory-sizes", default="1000,10000")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        _memory_child(args.model, args.child)
        return

    from tcpa_core import load_checkpoint
    from tcpa_core.data import DigitsOnClutter
    from tcpa_viz.atlas import prompt_atlas, prompt_importance

    report: dict[str, object] = {"threads": args.threads, "load_average_start": os.getloadavg()}
    model = load_checkpoint(args.model).eval()
    data = DigitsOnClutter("test")
    images = torch.stack([data[i][0] for i in range(len(data))])
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(0, len(images), 64):
            model(images[i:i + 64])
        report["forward_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    atlas = prompt_atlas(model, data, batch_size=64, progress=False)
    report["atlas_seconds"] = time.perf_counter() - start
    report["atlas_images"], report["atlas_blocks"] = atlas.num_images, len(atlas.layers)
    print(f"forward over {len(data)} images: {report['forward_seconds']:.2f} s; atlas over {atlas.num_images} "
          f"images x {len(atlas.layers)} blocks: {report['atlas_seconds']:.2f} s", flush=True)
    if not args.skip_ablations:
        start = time.perf_counter()
        last = prompt_importance(model, data, layers=[-1], progress=False)
        report["ablate_last_block_seconds"] = time.perf_counter() - start
        report["ablate_last_block_rows"] = len(last.rows)
        print(f"last-block ablations + 3 rules ({len(last.rows)} rows): "
              f"{report['ablate_last_block_seconds']:.1f} s", flush=True)
        start = time.perf_counter()
        full = prompt_importance(model, data, progress=False, rules=())
        report["ablate_all_seconds"] = time.perf_counter() - start
        report["ablate_all_rows"] = len(full.rows)
        print(f"all single-entry ablations ({len(full.rows)} rows): {report['ablate_all_seconds']:.1f} s", flush=True)
    memory = []
    for n in (int(v) for v in args.memory_sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--threads", str(args.threads),
                              "--child", str(n)], check=True, capture_output=True, text=True)
        memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"atlas on {n} synthetic images: peak RSS {memory[-1]['vmhwm_kib'] / 1024:.1f} MiB "
              f"({memory[-1]['seconds']:.1f} s)", flush=True)
    report["memory"] = memory
    report["load_average_end"] = os.getloadavg()
    print(f"load average start {report['load_average_start']}, end {report['load_average_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
