"""Importing tcpa_viz stays light: no streamlit, no pyplot (figures are built without global state)."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_pull_streamlit_or_pyplot():
    code = (
        "import sys, tcpa_viz\n"
        "bad = [m for m in ('streamlit', 'matplotlib.pyplot') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert len(tcpa_viz.__all__) == len(set(tcpa_viz.__all__))\n"
        "assert all(hasattr(tcpa_viz, name) for name in tcpa_viz.__all__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
