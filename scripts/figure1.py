"""Paper Fig. 1: attention of the CLS token, an object patch and a background patch (baseline vs TCPA), and time per
epoch vs accuracy.

Same as ``tcpa-viz figure 1``; every option of that command works here, e.g.::

    python scripts/figure1.py                                   # the checkpoints of demo_out/
    python scripts/figure1.py --baseline RUN_A --tcpa RUN_B --dataset cifar100 --data-root DIR --out figs

Writes figure1.png and figure1.html (default folder: demo_out/figures).
"""

from __future__ import annotations

import sys

from tcpa_viz.cli import main

if __name__ == "__main__":
    sys.exit(main(["figure", "1", *sys.argv[1:]]))
