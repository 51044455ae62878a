"""Paper Fig. 5: t-SNE of the test features with cluster metrics (baseline vs TCPA), plus tsne_metrics.json.

Same as ``tcpa-viz figure 5``; every option of that command works here, e.g.::

    python scripts/figure5.py                                   # the checkpoints of demo_out/
    python scripts/figure5.py --baseline RUN_A --tcpa RUN_B --dataset cifar100 --data-root DIR --out figs

Writes figure5.png, figure5.html and tsne_metrics.json (default folder: demo_out/figures).
"""

from __future__ import annotations

import sys

from tcpa_viz.cli import main

if __name__ == "__main__":
    sys.exit(main(["figure", "5", *sys.argv[1:]]))
