"""The paper figures and the rank report on tiny checkpoints: files, contents, patch choice, CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from tcpa_core import PromptConfig, build_model
from tcpa_core.checkpoint import save_checkpoint
from tcpa_core.data import DigitsOnClutter, limit_samples
from tcpa_core.errors import BackboneMismatchError, CheckpointError
from tcpa_viz.cli import main
from tcpa_viz.figures import (
    CLUTTER_LEVELS,
    FIGURES,
    RANK_COLUMNS,
    DataSpec,
    DigitsAtClutterLevel,
    FigureArgumentError,
    TSNERow,
    figure1,
    figure5,
    figure6,
    load_pair,
    load_run,
    rank_report,
    rows_from_args,
    run_all,
)
from tcpa_viz.figures.common import (
    box_to_input,
    demo_checkpoints,
    eval_transform,
    query_patches,
)
from tcpa_viz.figures.figure1 import timing_points
from tcpa_viz.saving import plotlyjs_name

BACKBONE = "vit_tiny_patch16_224"
ARCH = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEST_SAMPLES = 40
CONFIGS = {
    "vpt-deep": PromptConfig(method="vpt-deep", num_prompts=4),
    "tcpa": PromptConfig(method="tcpa", cls_pool_size=4, image_pool_size=4, cls_topk=2, image_topk=2),
}


def make_demo_dir(root: Path, max_samples: int | None = TEST_SAMPLES) -> Path:
    """A folder laid out like `tcpa-viz demo` output, with untrained tiny checkpoints on a saved tiny backbone."""
    torch.manual_seed(0)
    weights = root / "tiny_backbone.safetensors"
    save_file(timm.create_model(BACKBONE, num_classes=0, **ARCH).state_dict(), weights)
    source = {"name": BACKBONE, "pretrained": False, "weights": str(weights), "kwargs": ARCH}
    spec = {"name": "digits", "root": None, "val_fraction": 0.1, "seed": 0, "options": {},
            "max_samples": max_samples}
    demo = root / "demo"
    methods = {}
    for i, (method, cfg) in enumerate(CONFIGS.items()):
        torch.manual_seed(10 + i)
        model = build_model(BACKBONE, cfg, num_classes=10, checkpoint=weights, **ARCH)
        path = demo / method / "best"
        save_checkpoint(model, path, {"dataset": spec, "class_names": [str(d) for d in range(10)],
                                      "backbone_source": source})
        methods[method] = {"test_acc": 0.6 + 0.1 * i, "seconds_per_epoch": 2.0 + i, "checkpoint": str(path)}
    (demo / "summary.json").write_text(json.dumps({"methods": methods}))
    return demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dir(tmp_path_factory.mktemp("figures"))


@pytest.fixture(scope="module")
def pair(demo):
    return load_pair(None, None, demo)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """An image folder with a test split of two classes and no object boxes."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / "test" / cls).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "test" / cls / f"{i}.png")
    return root


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.load()
        assert image.width > 200 and image.height > 200


def assert_html(path: Path) -> None:
    text = path.read_text()
    assert 'class="plotly-graph-div"' in text and "Plotly.newPlot" in text, path
    assert f'<script charset="utf-8" src="{plotlyjs_name()}"></script>' in text, path
    assert (path.parent / plotlyjs_name()).stat().st_size > 1_000_000


def assert_outputs(paths: list[Path]) -> None:
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0, path
        if path.suffix == ".png":
            assert_png(path)
        elif path.suffix == ".html":
            assert_html(path)


def read_rank_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == RANK_COLUMNS
        return list(reader)


def test_run_all_writes_every_figure_and_the_rank_report(demo, tmp_path):
    out = tmp_path / "figs"
    lines: list[str] = []
    written = run_all(demo, out, log=lines.append, max_samples=30)
    assert list(written) == ["figure1", "figure3", "figure5", "figure6", "rank"]
    assert [p.name for p in written["figure1"]] == ["figure1.png", "figure1.html"]
    assert [p.name for p in written["figure5"]] == ["figure5.png", "figure5.html", "tsne_metrics.json"]
    assert [p.name for p in written["rank"]] == ["rank.csv", "rank.json", "rank.png", "rank.html"]
    for paths in written.values():
        assert_outputs(paths)
    assert len(lines) == 5 and lines[0].startswith("figure1: figure1.png")

    metrics = json.loads((out / "tsne_metrics.json").read_text())
    assert metrics["n_samples"] == 30 and set(metrics["models"]) == {"baseline", "tcpa"}
    for record in metrics["models"].values():
        assert {"silhouette_features", "knn_accuracy_features", "trustworthiness"} <= set(record["metrics"])
    fig6 = json.loads((out / "figure6_tsne_metrics.json").read_text())
    assert [r["row"] for r in fig6["rows"]] == ["plain background", "training clutter",
                                                "extra scribbles over the digit"]
    # The clutter row is the same data as Fig. 5, so its t-SNE is shared.
    assert fig6["rows"][1]["models"]["tcpa"]["metrics"] == metrics["models"]["tcpa"]["metrics"]

    rows = read_rank_csv(out / "rank.csv")
    assert {r["layer"] for r in rows} == {"0", "1"}
    combos = {(r["method"], r["attention"]) for r in rows}
    assert combos == {("vpt-deep", "masked"), ("tcpa", "masked"), ("tcpa", "raw")}
    assert {r["submatrix"] for r in rows} == {"full", "tokens"} and {r["heads"] for r in rows} == {"per-head",
                                                                                                   "head-mean"}
    assert {"energy_rank_0.9", "energy_rank_0.95", "energy_rank_0.99", "numerical_rank", "effective_rank",
            "stable_rank"} <= {r["measure"] for r in rows}
    per_head = [r for r in rows if r["heads"] == "per-head" and r["measure"] == "effective_rank"]
    assert all(int(r["n"]) == 16 * 2 for r in per_head)  # 16 images x 2 heads
    report = json.loads((out / "rank.json").read_text())
    assert report["meta"]["num_images"] == 16 and len(report["rows"]) == len(rows)


def test_tcpa_rank_rows_differ_before_and_after_the_mask(demo, tmp_path):
    (path,) = [p for p in rank_report(out_dir=tmp_path, num_images=4, demo_dir=demo) if p.suffix == ".csv"]
    rows = read_rank_csv(path)

    def value(attention: str) -> float:
        (row,) = [r for r in rows if r["method"] == "tcpa" and r["attention"] == attention and r["layer"] == "1"
                  and r["submatrix"] == "full" and r["heads"] == "per-head" and r["measure"] == "effective_rank"]
        return float(row["mean"])

    assert value("masked") != pytest.approx(value("raw"))


def test_box_mapping_follows_the_eval_transform(pair):
    model = pair[1].model
    transform = eval_transform(model)
    box = (13, 21, 37, 50)
    raw = np.zeros((64, 64, 3), dtype=np.uint8)
    raw[box[1]:box[3], box[0]:box[2]] = 255
    seen = transform(Image.fromarray(raw))[0].numpy()
    rows, cols = np.nonzero(seen > seen.min() + 0.5 * (seen.max() - seen.min()))
    mapped = box_to_input(box, (64, 64), model)
    assert mapped == pytest.approx((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1), abs=1.5)


def test_query_patches_sit_on_the_digit_and_on_the_background(pair):
    model = pair[1].model
    data = DigitsOnClutter(split="test", max_sources=12)
    grid = tuple(model.backbone.patch_embed.grid_size)
    for index in range(len(data)):
        patches = query_patches(data, index, model, grid)
        x0, y0, x1, y1 = patches.object_box
        cell = 32 / grid[0]
        r, c = patches.object_patch
        assert c * cell <= (x0 + x1) / 2 < (c + 1) * cell and r * cell <= (y0 + y1) / 2 < (r + 1) * cell
        free = [(i, j) for i in range(grid[0]) for j in range(grid[1])
                if not (j * cell < x1 and (j + 1) * cell > x0 and i * cell < y1 and (i + 1) * cell > y0)]
        assert patches.background_patch in free or not free


def test_timing_points_come_from_the_demo_summary_or_the_runs(pair, tmp_path):
    base, tcpa = pair
    from_summary = timing_points(base, tcpa, {"methods": {"vpt-deep": {"test_acc": 0.5, "seconds_per_epoch": 3.0},
                                                          "r-tcpa": {"test_acc": 0.6, "seconds_per_epoch": 2.0}}})
    assert [(p.label, p.accuracy, p.metric, p.tcpa_family) for p in from_summary] == [
        ("VPT-deep", 0.5, "test", False), ("R-TCPA", 0.6, "test", True)]
    assert timing_points(base, tcpa, None) == []  # untrained fixtures record no run summary or metrics
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"seconds_per_epoch": 4.0, "best_val_acc": 0.7}))
    moved = type(base)(base.model, run / "best", "mine", base.meta)
    (point,) = timing_points(moved, tcpa, None)
    assert (point.label, point.seconds_per_epoch, point.accuracy, point.metric) == ("mine", 4.0, 0.7, "validation")


def test_figures_on_a_dataset_without_boxes(pair, image_folder, tmp_path):
    spec = DataSpec(name="imagefolder", root=str(image_folder), split="test")
    paths = figure1(*pair, out_dir=tmp_path, data=spec, index=3, summary={})
    assert_outputs(paths)
    paths = figure5(*pair, out_dir=tmp_path, data=spec)
    assert_outputs(paths)
    metrics = json.loads(paths[-1].read_text())
    assert metrics["n_samples"] == 12 and metrics["data"]["name"] == "imagefolder"


def test_figure6_rows_with_their_own_checkpoints(demo, pair, image_folder, tmp_path):
    base, tcpa = demo_checkpoints(demo)
    rows = rows_from_args(["digits", "imagefolder"], ["-", str(image_folder)], [str(base)], [str(tcpa)])
    assert [r.label for r in rows] == ["digits test", "imagefolder test"]
    assert rows[1].data.root == str(image_folder) and rows[0].baseline == str(base)
    rows.append(TSNERow("digits val", DataSpec(split="val", max_samples=20), *pair))
    paths = figure6(rows, tmp_path, max_samples=25, stem="fig6_rows")
    assert_outputs(paths)
    record = json.loads(paths[-1].read_text())
    assert [r["n_samples"] for r in record["rows"]] == [25, 12, 20]
    with pytest.raises(FigureArgumentError, match="--baseline once per --dataset"):
        rows_from_args(["a", "b", "c"], [], ["x", "y"], [])


def test_clutter_levels_keep_the_test_digits():
    plain, clutter, heavy = (DigitsAtClutterLevel(level) for level in CLUTTER_LEVELS)
    base = DigitsOnClutter(split="test")
    assert plain.targets == clutter.targets == heavy.targets == base.targets
    assert np.array_equal(clutter.raw_image(5), base.raw_image(5))
    assert torch.equal(heavy.boxes, base.boxes)
    assert not np.array_equal(heavy.raw_image(5), base.raw_image(5))
    flat = plain.raw_image(5).reshape(-1, 3)
    assert (flat == flat[0]).all(axis=1).mean() > 0.5  # mostly one background colour
    again = DigitsAtClutterLevel("heavy")
    assert np.array_equal(again.raw_image(7), heavy.raw_image(7))
    subset = limit_samples(heavy, 10, seed=0)
    assert len(subset) == 10


def test_checkpoint_errors_are_one_line(tmp_path, capsys):
    assert main(["figure", "1", "--demo-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: No checkpoint at")
    with pytest.raises(CheckpointError, match="No checkpoint"):
        load_run(tmp_path / "missing")


@pytest.mark.slow
def test_cli_figure_rank_and_app_commands(demo, image_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    for number in ("1", "3", "5", "6"):
        assert main(["figure", number, "--demo-dir", str(demo), "--out", str(out), "--max-samples", "20"]) == 0
    assert main(["rank", "--demo-dir", str(demo), "--out", str(out), "--num-images", "4"]) == 0
    printed = capsys.readouterr().out
    for name in ("figure1.png", "figure3.html", "figure5.png", "tsne_metrics.json", "figure6.png", "rank.csv"):
        assert f"wrote {out / name}" in printed
        assert_outputs([out / name])
    base, tcpa = demo_checkpoints(demo)
    assert main(["figure", "6", "--dataset", "digits", "--dataset", "imagefolder", "--data-root", "-",
                 "--data-root", str(image_folder), "--baseline", str(base), "--tcpa", str(tcpa),
                 "--out", str(tmp_path / "six"), "--max-samples", "20"]) == 0
    rows = json.loads((tmp_path / "six" / "figure6_tsne_metrics.json").read_text())["rows"]
    assert [r["row"] for r in rows] == ["digits test", "imagefolder test"]
    assert main(["figure", "1", "--baseline", str(base), "--tcpa", str(tcpa), "--dataset", "imagefolder",
                 "--data-root", str(image_folder), "--index", "2", "--out", str(tmp_path / "one")]) == 0
    assert_outputs([tmp_path / "one" / "figure1.png"])
    assert main(["figure", "5", "--dataset", "digits", "--dataset", "digits", "--demo-dir", str(demo)]) == 2
    assert "takes one value here" in capsys.readouterr().err

    script = Path(__file__).resolve().parent.parent / "scripts" / "rank_report.py"
    proc = subprocess.run([sys.executable, str(script), "--demo-dir", str(demo), "--out", str(tmp_path / "script"),
                           "--num-images", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(read_rank_csv(tmp_path / "script" / "rank.csv")) > 0

    calls = []
    monkeypatch.setattr("tcpa_viz.cli._dashboard_launcher", lambda: lambda *a: calls.append(a) or 0)
    assert main(["app", "--port", "8765", "--demo-dir", str(demo)]) == 0
    assert calls == [(8765, str(demo), [], None)]


def test_the_registry_is_the_cli_figure_choices():
    from tcpa_viz.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    number = next(a for a in sub.choices["figure"]._actions if a.dest == "number")
    assert tuple(number.choices) == tuple(FIGURES) == ("1", "3", "5", "6")
    for key, spec in FIGURES.items():
        assert spec.number == key and spec.stem == f"figure{key}" and callable(spec.func)


def test_a_pair_on_different_backbones_is_refused(demo, tmp_path, capsys):
    """A TCPA checkpoint on another backbone (other weights, other patch grid) is refused with a message."""
    torch.manual_seed(5)
    other_arch = {**ARCH, "patch_size": 4}
    weights = tmp_path / "other_backbone.safetensors"
    save_file(timm.create_model(BACKBONE, num_classes=0, **other_arch).state_dict(), weights)
    model = build_model(BACKBONE, CONFIGS["tcpa"], num_classes=10, checkpoint=weights, **other_arch)
    other = tmp_path / "other" / "best"
    save_checkpoint(model, other, {"class_names": [str(d) for d in range(10)],
                                   "backbone_source": {"name": BACKBONE, "pretrained": False,
                                                       "weights": str(weights), "kwargs": other_arch}})
    base, _ = demo_checkpoints(demo)
    with pytest.raises(BackboneMismatchError, match="trained on different backbones: .*patch size 8x8 vs 4x4"):
        load_pair(base, other.parent, demo)
    assert main(["figure", "1", "--baseline", str(base), "--tcpa", str(other.parent), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on different backbones" in err[0]
    assert not (tmp_path / "figure1.png").exists()


def test_html_files_of_one_folder_share_one_plotlyjs(tmp_path):
    import plotly.graph_objects as go

    from tcpa_viz.saving import save_figure

    paths = [save_figure(go.Figure(go.Scatter(x=[0, 1], y=[i, 2])), tmp_path / f"f{i}.html") for i in range(2)]
    shared = tmp_path / plotlyjs_name()
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["f0.html", "f1.html", plotlyjs_name()]
    for path in paths:
        assert_html(path)
        assert path.stat().st_size < 100_000
    from plotly.offline import get_plotlyjs

    assert shared.read_text(encoding="utf-8") == get_plotlyjs()
    inline = save_figure(go.Figure(), tmp_path / "inline" / "f.html", plotlyjs="inline")
    assert inline.stat().st_size > 1_000_000 and not (inline.parent / plotlyjs_name()).exists()


def test_figures_script_runs_the_registry(monkeypatch):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "figures.py"
    spec = importlib.util.spec_from_file_location("figures_script", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls: list[list[str]] = []
    monkeypatch.setattr(script, "main", lambda argv: calls.append(argv) or 0)
    assert script.run(["--out", "figs"]) == 0
    assert calls == [["figure", n, "--out", "figs"] for n in FIGURES]
    calls.clear()
    assert script.run(["3", "1", "--index", "2"]) == 0
    assert calls == [["figure", "3", "--index", "2"], ["figure", "1", "--index", "2"]]
