"""notebooks/rank_analysis.ipynb runs top to bottom on tiny checkpoints and is stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient
from test_figures import make_demo_dir

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "rank_analysis.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_on_tiny_checkpoints(tmp_path, monkeypatch):
    demo = make_demo_dir(tmp_path)
    monkeypatch.setenv("TCPA_VIZ_DEMO_DIR", str(demo))
    monkeypatch.setenv("TCPA_VIZ_RANK_IMAGES", "4")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs if out.get("output_type") == "stream")
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    assert len(images) == 2  # rank vs layer, rank vs number of prompts
    assert "4 test images, 2 layers" in text
    findings = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(findings) == 4
    assert findings[0].startswith("- Averaged over the 2 layers, the effective rank of TCPA's attention")
    assert "For TCPA, the effective rank" in findings[2] and "at k=4" in findings[2]
    assert "For VPT-deep, the effective rank" in findings[3] and "at k=0" in findings[3]
