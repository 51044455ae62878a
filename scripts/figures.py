"""Regenerate the paper figures listed in ``tcpa_viz.figures.FIGURES`` (the figures of ``tcpa-viz figure N``).

    python scripts/figures.py                          # every figure, for the checkpoints of demo_out/
    python scripts/figures.py 1 3                      # figures 1 and 3 only
    python scripts/figures.py 5 --baseline RUN_A --tcpa RUN_B --dataset cifar100 --data-root DIR --out figs

Leading figure numbers choose the figures (default: all); every other argument is an option of
``tcpa-viz figure`` and goes to each of them (see ``tcpa-viz figure --help``). Writes ``figureN.png`` and
``figureN.html`` (plus the t-SNE metrics of figures 5 and 6) into ``--out`` (default: demo_out/figures).
"""

from __future__ import annotations

import sys

from tcpa_viz.cli import main
from tcpa_viz.figures import FIGURES


def run(argv: list[str]) -> int:
    """Run ``tcpa-viz figure N OPTIONS`` for the leading figure numbers of ``argv`` (default: every figure)."""
    numbers = []
    while argv and argv[0] in FIGURES:
        numbers.append(argv.pop(0))
    for number in numbers or list(FIGURES):
        status = main(["figure", number, *argv])
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
