"""Attention rank per layer of a baseline and a TCPA checkpoint (after and before the TCPA mask).

Same as ``tcpa-viz rank``; every option of that command works here, e.g.::

    python scripts/rank_report.py                                # the checkpoints of demo_out/
    python scripts/rank_report.py --baseline RUN_A --tcpa RUN_B --num-images 32 --out figs

Writes rank.csv, rank.json, rank.png and rank.html (default folder: demo_out/figures).
"""

from __future__ import annotations

import sys

from tcpa_viz.cli import main

if __name__ == "__main__":
    sys.exit(main(["rank", *sys.argv[1:]]))
