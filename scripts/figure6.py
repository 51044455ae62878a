"""Paper Fig. 6: t-SNE over several datasets (the demo: its test digits at three clutter levels).

Same as ``tcpa-viz figure 6``; every option of that command works here, e.g.::

    python scripts/figure6.py                                   # the checkpoints of demo_out/
    python scripts/figure6.py --dataset cub --data-root CUB_DIR --baseline CUB_VPT --tcpa CUB_TCPA \
        --dataset cifar100 --data-root C100_DIR --baseline C100_VPT --tcpa C100_TCPA --out figs

(one row per ``--dataset``, each with its own ``--data-root``, ``--baseline`` and ``--tcpa``, in order).

Writes figure6.png, figure6.html and figure6_tsne_metrics.json (default folder: demo_out/figures).
"""

from __future__ import annotations

import sys

from tcpa_viz.cli import main

if __name__ == "__main__":
    sys.exit(main(["figure", "6", *sys.argv[1:]]))
