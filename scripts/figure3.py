"""Paper Fig. 3: 3D rows and 2D matrix of the last layer's attention (baseline vs TCPA).

Same as ``tcpa-viz figure 3``; every option of that command works here, e.g.::

    python scripts/figure3.py                                   # the checkpoints of demo_out/
    python scripts/figure3.py --baseline RUN_A --tcpa RUN_B --dataset cifar100 --data-root DIR --out figs

Writes figure3.png and figure3.html (default folder: demo_out/figures).
"""

from __future__ import annotations

import sys

from tcpa_viz.cli import main

if __name__ == "__main__":
    sys.exit(main(["figure", "3", *sys.argv[1:]]))
