"""benchmarks/bench_core.py runs end to end on a tiny model (so the script cannot rot), and its optional
--authors-repo fails in one line where the authors' code cannot run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_vit

from tcpa_core import PromptConfig, build_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_core_quick_smoke_run(tmp_path, monkeypatch, capsys):
    bench_core = _load("bench_core", monkeypatch)
    assert bench_core.main(["--quick", "--skip-memory", "--json", str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr()
    results = json.loads(out.out)
    assert results == json.loads((tmp_path / "bench.json").read_text())
    assert results["model"] == "tiny" and results["repeats"] == 2
    assert results["max_abs_logit_diff"]["dense pattern"] <= 1e-4
    assert set(results["seconds"]) == {"tcpa", "dense", "floor", "vpt-deep", "forward", "forward+capture"}
    assert all(len(s["all"]) == 2 and s["min"] > 0 for s in results["seconds"].values())
    assert {"time tcpa/floor", "time tcpa/dense", "time tcpa/vpt-deep"} <= set(results["targets"])
    assert "| time tcpa/floor |" in out.err


@pytest.mark.slow
def test_bench_core_memory_child_process(monkeypatch):
    """One variant's peak memory through the real child process (the full run does tcpa, dense, floor)."""
    bench_core = _load("bench_core", monkeypatch)
    peak = bench_core.measure_memory(bench_core.parse_args(["--quick"]), "dense")
    assert isinstance(peak, float) and peak >= 0


def test_bench_core_authors_repo_fails_in_one_line(tmp_path, monkeypatch, capsys):
    bench_core = _load("bench_core", monkeypatch)
    code = bench_core.main(["--quick", "--skip-memory", "--authors-repo", str(tmp_path / "missing")])
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    assert out.err.startswith("error: --authors-repo") and out.err.strip().count("\n") == 0


def test_authors_code_checks_say_why(tmp_path, monkeypatch):
    authors_code = _load("authors_code", monkeypatch)
    model = build_model(tiny_vit("plain"), PromptConfig(cls_pool_size=6, image_pool_size=5, cls_topk=3,
                                                        image_topk=2))
    with pytest.raises(authors_code.AuthorsCodeError, match="missing models/VFPT_TCPA.py"):
        authors_code.check_authors_repo(tmp_path, model, torch.device("cpu"))
    for name in authors_code.REQUIRED_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    with pytest.raises(authors_code.AuthorsCodeError, match="hard-codes ViT-B/16"):
        authors_code.check_authors_repo(tmp_path, model, torch.device("cpu"))
