"""Warm interaction latency of the dashboard: script reruns after a patch or a layer change.

Usage: python benchmarks/bench_dashboard.py [--demo-dir demo_out] [--threads 1]

Runs ``app/dashboard.py`` headless through Streamlit's ``AppTest`` on the checkpoints of ``--demo-dir``
(run ``make demo`` first), warms it up with one click, then times patch clicks and layer changes.
The bar (DESIGN.md section 4) is <= 2 s per warm interaction on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

DASHBOARD = Path(__file__).resolve().parents[1] / "app" / "dashboard.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default="demo_out")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ["TCPA_VIZ_DEMO_DIR"] = str(Path(args.demo_dir).resolve())
    os.environ["TCPA_VIZ_THREADS"] = str(args.threads)
    app = AppTest.from_file(str(DASHBOARD), default_timeout=300)
    start = time.perf_counter()
    app.run()
    cold = time.perf_counter() - start
    if app.exception:
        raise SystemExit(f"the dashboard failed: {[e.value for e in app.exception]}")
    app.button(key="patch_0_0").click().run()
    timings: dict[str, list[float]] = {"patch": [], "layer": []}
    for row, col in [(1, 2), (5, 6), (7, 0), (3, 3)]:
        start = time.perf_counter()
        app.button(key=f"patch_{row}_{col}").click().run()
        timings["patch"].append(time.perf_counter() - start)
    for layer in (0, 3, 5, 2):
        start = time.perf_counter()
        app.slider(key="w_layer").set_value(layer).run()
        timings["layer"].append(time.perf_counter() - start)
    print(f"cold start {cold:.2f} s")
    for name, values in timings.items():
        print(f"warm {name} change: median {statistics.median(values):.3f} s, max {max(values):.3f} s")


if __name__ == "__main__":
    main()
