"""Dashboard tests with ``streamlit.testing.v1.AppTest`` on tiny checkpoints written to a temporary folder."""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from tcpa_core import PromptConfig, build_model, capture
from tcpa_core.checkpoint import save_checkpoint
from tcpa_core.data import build_transforms
from tcpa_core.data.digits import DigitsOnClutter
from tcpa_core.weights_io import backbone_fingerprint, backbone_state

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "app" / "dashboard.py"
DEMO_DIR_ENV = "TCPA_VIZ_DEMO_DIR"
CHECKPOINTS_ENV = "TCPA_VIZ_CHECKPOINTS"
THREADS_ENV = "TCPA_VIZ_THREADS"
TINY_ARCH: dict[str, Any] = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
TINY_POOLS = {"cls_pool_size": 6, "image_pool_size": 6, "cls_topk": 3, "image_topk": 3}
DEMO_POOLS = {"cls_pool_size": 18, "image_pool_size": 18, "cls_topk": 10, "image_topk": 10}
"""Pool sizes of ``make demo`` (the authors' defaults)."""
DIGITS = {"name": "digits", "root": None, "seed": 0, "options": {}}
TIMEOUT = 120


def _backbone_file(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in backbone_state(model.backbone).items()}, str(path))
    return path


def _save(model: torch.nn.Module, directory: Path, weights: Path, arch: dict[str, Any],
          fingerprint: str | None = None) -> Path:
    source = {"name": "tcpa_demo_vit", "pretrained": False, "weights": str(weights), "kwargs": arch}
    meta = {"dataset": DIGITS, "class_names": [str(i) for i in range(10)], "metrics": {"val_acc": 0.5}, "epoch": 1}
    save_checkpoint(model, directory, meta, backbone_source=source, fingerprint=fingerprint)
    return directory


def write_demo_dir(root: Path, arch: dict[str, Any] | None = None, pools: dict[str, int] | None = None,
                   num_prompts: int = 4) -> Path:
    """A ``demo_out``-like folder: ``tcpa/best`` and ``vpt-deep/best`` on one randomly initialised
    ``tcpa_demo_vit`` (architecture ``arch``) whose weights are saved beside it, plus ``summary.json``."""
    arch = dict(TINY_ARCH if arch is None else arch)
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    tcpa = build_model("tcpa_demo_vit", PromptConfig(method="tcpa", **(pools or TINY_POOLS)), num_classes=10,
                       **arch)
    weights = _backbone_file(tcpa, root / "backbone.safetensors")
    vpt = build_model("tcpa_demo_vit", PromptConfig(method="vpt-deep", num_prompts=num_prompts), num_classes=10,
                      checkpoint=weights, **arch)
    demo = root / "demo_out"
    _save(tcpa, demo / "tcpa" / "best", weights, arch)
    _save(vpt, demo / "vpt-deep" / "best", weights, arch)
    summary = {"methods": {"tcpa": {"checkpoint": "demo_out/tcpa/best", "test_acc": 0.25},
                           "vpt-deep": {"checkpoint": "demo_out/vpt-deep/best", "test_acc": 0.2}}}
    (demo / "summary.json").write_text(json.dumps(summary))
    return demo


def write_foreign_checkpoints(root: Path) -> tuple[Path, Path]:
    """``(mismatched, other_backbone)``: a TCPA checkpoint whose recorded backbone fingerprint differs from the
    backbone it names, and a VPT-deep checkpoint trained on a different backbone than the demo folder's."""
    torch.manual_seed(1)
    root.mkdir(parents=True, exist_ok=True)
    arch = dict(TINY_ARCH, depth=3)
    other = build_model("tcpa_demo_vit", PromptConfig(method="vpt-deep", num_prompts=4), num_classes=10, **arch)
    weights = _backbone_file(other, root / "other_backbone.safetensors")
    other_dir = _save(other, root / "other" / "vpt-deep", weights, arch)
    tcpa = build_model("tcpa_demo_vit", PromptConfig(method="tcpa", **TINY_POOLS), num_classes=10, checkpoint=weights,
                       **arch)
    wrong = "0" * 64 if backbone_fingerprint(tcpa.backbone) != "0" * 64 else "1" * 64
    mismatched = _save(tcpa, root / "mismatched" / "tcpa", weights, arch, fingerprint=wrong)
    return mismatched, other_dir


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dir(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_foreign_checkpoints(tmp_path_factory.mktemp("foreign"))


def start(monkeypatch: pytest.MonkeyPatch, demo: Path, extra: str | None = None) -> AppTest:
    """Run the dashboard on ``demo`` (and the ``extra`` checkpoints); it keeps this process's torch threads."""
    monkeypatch.setenv(DEMO_DIR_ENV, str(demo))
    monkeypatch.setenv(THREADS_ENV, str(torch.get_num_threads()))
    if extra is None:
        monkeypatch.delenv(CHECKPOINTS_ENV, raising=False)
    else:
        monkeypatch.setenv(CHECKPOINTS_ENV, extra)
    at = AppTest.from_file(str(DASHBOARD), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def app(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    return start(monkeypatch, demo_dir)


def texts(at: AppTest) -> str:
    """Every markdown, caption, heading and alert text of the page, one per line."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [h.value for h in at.subheader]
    parts += [a.value for kind in (at.error, at.warning, at.info) for a in kind]
    return "\n".join(parts)


def selection_line(at: AppTest) -> str:
    lines = [m.value for m in at.markdown if "Image prompts selected by patch" in m.value]
    assert len(lines) == 1, texts(at)
    return lines[0]


def expected_selection(demo: Path, index: int, row: int, col: int, layer: int) -> list[int]:
    """The image-pool entries the TCPA checkpoint selects for one patch of test image ``index``."""
    from tcpa_core.checkpoint import load_checkpoint

    model = load_checkpoint(demo / "tcpa" / "best")
    cfg = {**model.data_config, "input_size": (3, *model.backbone.patch_embed.img_size)}
    image, _ = DigitsOnClutter(split="test", transform=build_transforms(cfg, train=False))[index]
    with torch.no_grad(), capture(model, names=("image_assign",)) as cache:
        model(image[None])
    width = model.backbone.patch_embed.grid_size[1]
    return cache["image_assign", layer][0, row * width + col].tolist()


def weights_of(checkpoint_dir: Path) -> str:
    """The value the model selectors use for a checkpoint folder (its weights file)."""
    return str((checkpoint_dir / "model.safetensors").resolve())


def app_module(name: str) -> ModuleType:
    """Import a module of the installed ``app`` package."""
    return importlib.import_module(name)


# ------------------------------------------------------------------------------------------ rendering
def test_main_view_renders_the_selection(app: AppTest) -> None:
    assert not app.error, [e.value for e in app.error]
    page = texts(app)
    assert "Selected patch (2, 2) at layer 1" in page
    shares = [h.proto.body for h in app.get("html") if "attention share of patch" in h.proto.body]
    assert len(shares) == 1 and "TCPA: its 3 selected image prompts" in shares[0]
    assert "TCPA (tcpa/best) predicts" in page and "Baseline (vpt-deep/best) predicts" in page
    assert len(app.get("download_button")) >= 3
    assert not [b for b in app.button if b.key and b.key.startswith("patch_")], "no button per patch"
    shares = " ".join(c.value for c in app.caption if "TCPA gives its selected prompts" in c.value)
    assert "the baseline gives its 4 prompts" in shares


def test_script_has_no_stray_strings() -> None:
    """Streamlit would print a bare string expression of the entry script into the page ("magic")."""
    import ast

    tree = ast.parse(DASHBOARD.read_text())
    stray = [node.lineno for node in tree.body[1:]
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)]
    assert not stray, f"bare strings at lines {stray} of {DASHBOARD.name}"


def test_sidebar_lists_the_view_registry(app: AppTest) -> None:
    views = app_module("app.views")
    names = [v.name for v in views.list_views()]
    assert app.radio(key="view").options == [v.label for v in views.list_views()]
    for name in names:
        app.radio(key="view").set_value(name).run()
        assert not app.exception, (name, [e.value for e in app.exception])
        assert not app.error, (name, [e.value for e in app.error])
    with pytest.raises(ValueError, match="registered twice"):
        views.register_view(names[0], "again", order=0)(lambda ctx: None)


def test_app_is_an_installed_package() -> None:
    """``tcpa-viz app`` imports the dashboard as a package and the entry script edits no ``sys.path``."""
    from tcpa_viz.cli import _dashboard_launcher

    assert _dashboard_launcher() is app_module("app.launch").launch
    assert "sys.path" not in DASHBOARD.read_text()


def test_every_view_runs(app: AppTest) -> None:
    app.radio(key="view").set_value("attention").run()
    for panel in ("mask", "surface", "matrix"):
        app.segmented_control(key="att_panel").set_value(panel).run()
        assert not app.exception and not app.error, panel
    app.toggle(key="att_raw").set_value(True).run()
    app.toggle(key="att_log").set_value(True).run()
    app.toggle(key="att_smooth").set_value(True).run()
    app.selectbox(key="w_heads").set_value("1").run()
    app.radio(key="att_query").set_value("cls").run()
    assert not app.exception and not app.error
    app.radio(key="view").set_value("selection").run()
    for panel in ("cls", "map", "usage", "patch"):
        app.segmented_control(key="sel_panel").set_value(panel).run()
        assert not app.exception and not app.error, panel
    app.radio(key="view").set_value("features").run()
    app.number_input(key="tsne_count").set_value(30).run()
    app.button(key="tsne_run").click().run()
    assert not app.exception and not app.error
    assert len(app.dataframe) == 2
    per_class = app.dataframe[1].value
    assert list(per_class.columns) == [str(c) for c in range(10)] and "images" in per_class.index
    app.radio(key="view").set_value("rank").run()
    app.selectbox(key="rank_block").set_value("patches").run()
    app.selectbox(key="rank_measure").set_value("stable_rank").run()
    assert not app.exception and not app.error
    app.radio(key="view").set_value("models").run()
    assert not app.exception and not app.error
    table = app.dataframe[0].value
    assert "trainable parameters" in table.index and "test accuracy" in table.index
    assert list(table.loc["test accuracy"]) == ["20.00 %", "25.00 %"]


def test_features_view_runs_no_forward_pass_on_the_image(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing the image on the t-SNE page runs no model on it; the next page that shows the image does."""
    loading = app_module("app.loading")
    captured: list[str] = []
    original = loading.capture_image

    def recording(*args: Any) -> Any:
        captured.append(args[1])
        return original(*args)

    monkeypatch.setattr(loading, "capture_image", recording)
    app.radio(key="view").set_value("features").run()
    app.number_input(key="tsne_count").set_value(30).run()
    app.button(key="tsne_run").click().run()
    app.number_input(key="image_index").set_value(7).run()
    assert not app.exception and not app.error
    assert captured == []
    app.radio(key="view").set_value("selection").run()
    assert len(captured) == 2 and all(key.endswith("#7") for key in captured)


def entries(values: list[int]) -> str:
    """The selection line's bold list of image-pool entries."""
    return "**" + ", ".join(f"img {v}" for v in values) + "**"


def pick_patch(at: AppTest, row: int, col: int) -> None:
    at.number_input(key="w_patch_row").set_value(row).run()
    at.number_input(key="w_patch_col").set_value(col).run()


def test_patch_and_layer_change_the_selection(app: AppTest, demo_dir: Path) -> None:
    before = selection_line(app)
    pick_patch(app, 0, 3)
    assert "Selected patch (0, 3) at layer 1" in texts(app)
    grid = patch_panel_data(app, "grid_chart")
    assert (grid["selected"], grid["grid"], grid["lines"], len(grid["panels"])) == ([0, 3], [4, 4], True, 1)
    expected = expected_selection(demo_dir, 0, 0, 3, 1)
    assert entries(expected) in selection_line(app)
    app.slider(key="w_layer").set_value(0).run()
    after_layer = selection_line(app)
    assert "Selected patch (0, 3) at layer 0" in texts(app)
    assert entries(expected_selection(demo_dir, 0, 0, 3, 0)) in after_layer
    app.number_input(key="w_patch_row").set_value(3).run()
    app.number_input(key="w_patch_col").set_value(1).run()
    assert "Selected patch (3, 1) at layer 0" in texts(app)
    assert entries(expected_selection(demo_dir, 0, 3, 1, 0)) in selection_line(app)
    assert len({before, after_layer, selection_line(app)}) == 3
    app.radio(key="view").set_value("attention").run()
    assert app.slider(key="w_layer").value == 0
    assert "Attention of patch (3, 1) at layer 0" in texts(app)
    overlay = patch_panel_data(app, "att_overlay")
    assert overlay["selected"] == [3, 1] and overlay["grid"] == [4, 4]
    assert [p["name"] for p in overlay["panels"]] == ["Baseline (VPT-deep)", "TCPA (TCPA)",
                                                      "TCPA (TCPA) minus Baseline (VPT-deep)"]
    assert [b["label"] for b in overlay["bars"]] == ["share", "difference"]


def patch_panel_data(at: AppTest, key: str) -> dict:
    """The data the page sent to the patch-panel component drawn with key ``key``."""
    import json

    sent = [e.proto for e in at.get("bidi_component") if e.proto.id.endswith(f"-{key}")]
    assert len(sent) == 1 and sent[0].component_name == "patch_panels", [e.proto.id for e in at.get("bidi_component")]
    return json.loads(sent[0].json)


def test_choosing_another_test_image(app: AppTest) -> None:
    app.number_input(key="image_index").set_value(7).run()
    assert not app.exception
    assert "test image 7" in texts(app)


# ------------------------------------------------------------------------------------------ bad input
def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(at: AppTest, name: str, data: bytes, mime: str) -> AppTest:
    at.radio(key="image_source").set_value("upload").run()
    at.file_uploader(key="image_upload").set_value((name, data, mime)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_upload_that_is_not_an_image(app: AppTest) -> None:
    upload(app, "notes.png", b"just some text, not pixels", "image/png")
    errors = " ".join(e.value for e in app.error)
    assert "notes.png" in errors and "not an image" in errors
    assert "Selected patch" in texts(app)
    assert app.get("file_uploader")[0].key != "image_upload", "the rejected file is cleared (new uploader)"


def test_decompression_bomb_upload(app: AppTest) -> None:
    upload(app, "bomb.png", _png(Image.new("1", (9000, 6000))), "image/png")
    errors = " ".join(e.value for e in app.error)
    assert "bomb.png" in errors and "9000x6000" in errors and "limit" in errors
    assert "Selected patch" in texts(app)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_uploads_are_converted(app: AppTest, mode: str) -> None:
    image = Image.new(mode, (50, 40), 128 if mode == "L" else (200, 30, 30, 90))
    upload(app, f"picture_{mode}.png", _png(image), "image/png")
    assert not app.error, [e.value for e in app.error]
    warnings = " ".join(w.value for w in app.warning)
    assert f"converted the {mode} image to RGB" in warnings and "resized from 50x40" in warnings
    assert f"picture_{mode}.png" in texts(app) and "Selected patch" in texts(app)


def test_checkpoint_for_another_backbone(app: AppTest, demo_dir: Path, foreign: tuple[Path, Path]) -> None:
    mismatched, _ = foreign
    app.text_input(key="checkpoint_path").input(str(mismatched)).run()
    app.button(key="add_checkpoint").click().run()
    assert not app.exception
    errors = " ".join(e.value for e in app.error)
    assert "Could not load" in errors and "fingerprint" in errors
    app.selectbox(key="tcpa_checkpoint").select(weights_of(demo_dir / "tcpa" / "best")).run()
    assert not app.exception and not app.error
    assert "Selected patch" in texts(app)


def test_baseline_on_another_backbone_is_left_out(demo_dir: Path, foreign: tuple[Path, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, other = foreign
    at = start(monkeypatch, demo_dir, extra=str(other))
    at.selectbox(key="baseline_checkpoint").select(weights_of(other)).run()
    assert not at.exception
    assert "Cannot compare these models" in " ".join(e.value for e in at.error)
    predictions = [c.value for c in at.caption if "predicts" in c.value]
    assert "Selected patch" in texts(at) and "Baseline" not in predictions[0]


def test_missing_checkpoint_path(app: AppTest, tmp_path: Path) -> None:
    app.text_input(key="checkpoint_path").input(str(tmp_path / "nowhere")).run()
    app.button(key="add_checkpoint").click().run()
    assert not app.exception
    assert "does not exist" in " ".join(e.value for e in app.error)
    assert "Selected patch" in texts(app)


def test_no_demo_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = start(monkeypatch, tmp_path / "demo_out")
    warnings = " ".join(w.value for w in at.warning)
    assert "No checkpoints found" in warnings and "make demo" in warnings


# ------------------------------------------------------------------------------------------ exports
def test_export_builders(demo_dir: Path) -> None:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

    export = app_module("app.export")
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    assert export.png_bytes(lambda: figure).startswith(b"\x89PNG")
    assert "plotly" in export.html_text(go.Figure(go.Bar(y=[1, 2])))
    loading = app_module("app.loading")
    from tcpa_core.checkpoint import load_checkpoint

    model = load_checkpoint(demo_dir / "tcpa" / "best")
    with torch.no_grad(), capture(model, names=("cls_assign", "image_assign")) as cache:
        model(torch.zeros(2, 3, 32, 32))
    csv = loading.assignments_csv(cache.layout, {l: cache["cls_assign", l] for l in range(2)},
                                  {l: cache["image_assign", l] for l in range(2)}, ["a", "b"]).decode()
    lines = csv.strip().splitlines()
    assert lines[0] == "layer,image,token,query_index,pool,selected,label,prediction"
    assert len(lines) == 1 + 2 * 2 * (1 + 16)


def test_every_figure_and_table_exports(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    export = app_module("app.export")
    original = export.export_bar
    shown: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def recording(figures: list[Any], key: str, stem: str, csv: dict[str, Any] | None = None) -> None:
        seen, tables = shown.setdefault(key, ({}, {}))
        seen.update({f.name: f for f in figures})
        tables.update(csv or {})
        original(figures, key, stem, csv)

    for name in ("app.views.selection", "app.views.attention", "app.views.features", "app.views.rank"):
        monkeypatch.setattr(app_module(name), "export_bar", recording)
    app.run()
    for panel in ("cls", "map", "usage"):
        app.segmented_control(key="sel_panel").set_value(panel).run()
    app.radio(key="view").set_value("attention").run()
    for panel in ("matrix", "mask", "surface"):
        app.segmented_control(key="att_panel").set_value(panel).run()
    app.radio(key="view").set_value("rank").run()
    app.radio(key="view").set_value("features").run()
    app.number_input(key="tsne_count").set_value(20).run()
    app.button(key="tsne_run").click().run()
    assert not app.exception
    assert set(shown) == {"sel_export", "att_export", "rank_export", "tsne_export"}
    names = [name for figures, _ in shown.values() for name in figures]
    assert len(names) >= 14, names
    for figures, tables in shown.values():
        for figure in figures.values():
            assert export.png_bytes(figure.matplotlib, dpi=50).startswith(b"\x89PNG"), figure.name
            assert export.html_text(figure.plotly_figure()).rstrip().endswith("</html>"), figure.name
        for label, (_, build) in tables.items():
            header = (b"model,query_row,query,key_column,key,weight\n" if label == "CSV: matrices"
                      else b"layer,image,token,query_index,pool,selected,label,prediction")
            assert build().startswith(header), label


def test_launch_command_reaches_the_dashboard_options() -> None:
    launch = app_module("app.launch")
    cmd = launch.streamlit_command(8600, "somewhere", ["a", "b"], address="127.0.0.1")
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == DASHBOARD
    assert cmd[cmd.index("--server.port") + 1] == "8600" and cmd[cmd.index("--server.headless") + 1] == "true"
    options = cmd[cmd.index("--") + 1:]
    assert options == ["--demo-dir", "somewhere", "--checkpoint", "a", "--checkpoint", "b"]
    args = app_module("app.dashboard").parse_args(options)
    assert args.demo_dir == "somewhere" and args.checkpoint == ["a", "b"]
    assert "--" not in launch.streamlit_command(None)


# ------------------------------------------------------------------------------------------ latency
@pytest.mark.slow
def test_demo_sized_model_follows_patch_and_layer_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the demo architecture (64 px, 8x8 grid, depth 6, width 192, pools 18/18 with top-10) every patch or
    layer change re-renders the selection (latency: benchmarks/bench_dashboard.py)."""
    demo = write_demo_dir(tmp_path, arch={}, pools=DEMO_POOLS, num_prompts=10)
    at = start(monkeypatch, demo)
    for r, c in [(1, 2), (5, 6), (7, 0)]:
        pick_patch(at, r, c)
        assert f"Selected patch ({r}, {c})" in texts(at)
    for layer in (0, 3, 5):
        at.slider(key="w_layer").set_value(layer).run()
        assert f"at layer {layer}" in texts(at)
    assert not at.exception


# ------------------------------------------------------------------------------------------ prompt atlas
ATLAS_GRID, ATLAS_CLASSES, ATLAS_IMAGES, ATLAS_GALLERY = (4, 4), 10, 5, 3


def write_atlas_dir(folder: Path, layers: tuple[int, ...] = (0, 1), size: int = 6, ablated: int = 1) -> dict:
    """A small hand-written atlas folder in the format of ``tcpa-viz atlas`` / ``ablate`` (atlas.json,
    gallery.npz, ablation.csv) with distinct numbers per (block, pool, entry); returns the atlas document."""
    import csv

    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    patches = ATLAS_GRID[0] * ATLAS_GRID[1]
    blocks, crops = [], {}
    for layer in layers:
        for pool in ("cls", "image"):
            tokens = ATLAS_IMAGES * (1 if pool == "cls" else patches)
            selected = [(3 * e + layer + 1) % tokens for e in range(size)]
            collapsed = layer == 0 and pool == "cls"
            blocks.append({
                "layer": layer, "pool": pool, "tokens": tokens, "images": ATLAS_IMAGES, "pool_size": size,
                "topk": 3, "entries_used": size, "entropy": 0.5 + 0.1 * layer, "distinct_sets": 1 + layer,
                "distinct_sets_random": 4.9, "jaccard": 0.25 + layer / 10, "jaccard_random": 0.2,
                "nmi_class_set": {"nmi": 0.12 + layer / 100, "chance": 0.05, "chance_std": 0.01},
                "nmi_class_top1": {"nmi": 0.3, "chance": 0.07, "chance_std": 0.01},
                "nmi_object_top1": None if pool == "cls" else {"nmi": 0.2, "chance": 0.01, "chance_std": 0.0},
                "collapse": {"collapsed": collapsed, "kinds": ["one set"] if collapsed else [],
                             "message": f"block {layer} {pool}: " + ("COLLAPSED to one set" if collapsed else
                                                                    "no collapse")},
                "selected": selected, "top1": [s // 2 for s in selected],
                "class_selected": [[(c + e) % 4 for e in range(size)] for c in range(ATLAS_CLASSES)],
                "class_tokens": [4] * ATLAS_CLASSES,
                "position_selected": None if pool == "cls" else
                [[(p == e) * ATLAS_IMAGES for p in range(patches)] for e in range(size)],
                "gallery": [[{"image": g, "patch": e, "row": e // 4, "col": e % 4, "similarity": 0.9 - g / 10,
                              "rank": 1} for g in range(ATLAS_GALLERY)] for e in range(size)],
            })
            crops[f"L{layer}_{pool}"] = np.full((size, ATLAS_GALLERY, 48, 48, 3), 40 * layer, dtype=np.uint8)
    document = {"meta": {"layers": list(layers), "num_images": ATLAS_IMAGES, "num_classes": ATLAS_CLASSES,
                         "class_names": [str(c) for c in range(ATLAS_CLASSES)], "grid": list(ATLAS_GRID),
                         "split": "test"},
                "collapse": [b["collapse"]["message"] for b in blocks], "blocks": blocks}
    (folder / "atlas.json").write_text(json.dumps(document))
    np.savez_compressed(folder / "gallery.npz", **crops)
    columns = ["layer", "pool", "entry", "mode", "accuracy", "delta_accuracy", "delta_true_logit", "base_accuracy",
               "changed_predictions", "images_selecting", "images"]
    with open(folder / "ablation.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for pool in ("cls", "image"):
            for entry in range(size):
                for k, mode in enumerate(("mask", "remove")):
                    delta = -round(0.01 * (entry + 1) * (k + 1), 4)
                    writer.writerow([ablated, pool, entry, mode, 0.8 + delta, delta, 10 * delta, 0.8, 0.1, 3, 5])
        for mode, accuracy in (("random", 0.5), ("shared", 0.7), ("all", 0.6)):
            writer.writerow(["all", "all", "", mode, accuracy, accuracy - 0.8, "", 0.8, 0.2, "", 5])
    return document


@pytest.fixture(scope="module")
def atlas_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo = write_demo_dir(tmp_path_factory.mktemp("atlas_app"))
    write_atlas_dir(demo / "atlas")
    return demo


def open_atlas(at: AppTest) -> AppTest:
    at.radio(key="view").set_value("atlas").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_atlas_view_renders_its_sections(atlas_demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_atlas(start(monkeypatch, atlas_demo))
    page = texts(at)
    for section in ("Collapse diagnostics per block", "Gallery", "Spatial map", "Class histogram", "Ablation effect"):
        assert section in page, section
    assert "block 0 cls: COLLAPSED to one set" in page and "block 1 image: no collapse" in page
    assert "**Selection collapse in 1 of 4 (block, pool) pairs**: 0 cls" in page
    diagnostics = at.dataframe[0].value
    assert len(diagnostics) == 4
    assert diagnostics.loc[(1, "cls"), "NMI(set; class)"] == "0.130 (chance 0.050)"
    assert diagnostics.loc[(0, "cls"), "collapsed"] == "yes" and diagnostics.loc[(0, "image"), "collapsed"] == "no"
    assert diagnostics.loc[(1, "image"), "NMI(top-1; object)"] == "0.200 (chance 0.010)"
    assert diagnostics.loc[(0, "cls"), "NMI(top-1; object)"] == "–"
    # default: last block, image pool, entry 0; the ablation rows of that entry
    assert "**Block 1, image pool, entry 0**: selected by 2 of 80 tokens" in page
    at.selectbox(key="w_atlas_entry").set_value(2).run()
    table = at.dataframe[1].value
    assert list(table.index) == ["mask", "remove"]
    assert table.loc["mask", "delta_accuracy"] == pytest.approx(-0.03)
    assert table.loc["remove", "delta_true_logit"] == pytest.approx(-0.6)
    assert "random 50.00 %" in texts(at) and "top-k selection 80.00 %" in texts(at)
    spatial = at.get("plotly_chart")[0].proto.spec
    assert "share of images whose patch selects img 2" in spatial
    classes = json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]
    assert classes["y"][:3] == pytest.approx([0.5, 0.75, 0.0])
    gallery = at.get("image")[0]
    assert gallery.captions == [f"img {g} (0,2) sim {0.9 - g / 10:.2f}" for g in range(ATLAS_GALLERY)]
    at.selectbox(key="w_atlas_block").set_value(0).run()
    assert "block 0 was not ablated" in texts(at) and "--layers 0" in texts(at)
    at.radio(key="w_atlas_pool").set_value("cls").run()
    assert not at.exception and not at.error
    assert "has no spatial map" in texts(at) and "**Block 0, CLS pool, entry 2**" in texts(at)


def test_atlas_view_without_files_says_how_to_create_them(app: AppTest) -> None:
    open_atlas(app)
    hints = [i.value for i in app.info]
    assert len(hints) == 1 and "\n" not in hints[0], hints
    assert "create it with `tcpa-viz atlas --model" in hints[0] and "/atlas`" in hints[0]
    assert not app.dataframe


def test_selection_view_links_a_prompt_to_its_atlas_page(atlas_demo: Path, monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    at = start(monkeypatch, atlas_demo)
    chosen = expected_selection(atlas_demo, 0, 2, 2, 1)
    picker = at.selectbox(key="sel_atlas_entry")
    assert picker.options[:len(chosen)] == [f"img {e}" for e in chosen]
    picker.set_value(f"image {chosen[1]}").run()
    at.button(key="sel_atlas_open").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["view"] == "atlas"
    assert (at.session_state["atlas_block"], at.session_state["atlas_pool"]) == (1, "image")
    assert at.session_state["atlas_entry"] == chosen[1]
    assert f"**Block 1, image pool, entry {chosen[1]}**" in texts(at)


# ------------------------------------------------------------------------------------------ explanations
@pytest.mark.parametrize("method", ["attention", "relevance"])
def test_attention_view_explanation_and_deletion_curve(app: AppTest, demo_dir: Path, method: str) -> None:
    from tcpa_core.checkpoint import load_checkpoint
    from tcpa_viz import explain, faithfulness, list_explainers

    app.radio(key="view").set_value("attention").run()
    assert not app.get("plotly_chart") or all("deletion AUC" not in c.proto.spec for c in app.get("plotly_chart"))
    app.toggle(key="att_explain").set_value(True).run()
    assert app.selectbox(key="att_explain_method").options == list_explainers()
    app.selectbox(key="att_explain_method").set_value(method).run()
    app.selectbox(key="att_explain_target").set_value(3).run()
    assert not app.exception and not app.error, [e.value for e in app.exception]
    model = load_checkpoint(demo_dir / "tcpa" / "best")
    cfg = {**model.data_config, "input_size": (3, *model.backbone.patch_embed.img_size)}
    image, _ = DigitsOnClutter(split="test", transform=build_transforms(cfg, train=False))[0]
    result = explain(model, image[None], target=3, method=method)
    auc = faithfulness(model, image[None], result, steps=8, random_orders=1, seed=0).auc["deletion"][0]
    line = next(x for c in app.caption for x in c.value.split("\n")
                if x.startswith("**TCPA**") and "deletion AUC" in x)
    assert f"class 3, deletion AUC {float(auc):.3f}" in line
    spec = next(c.proto.spec for c in app.get("plotly_chart") if "deletion AUC" in c.proto.spec)
    assert f"{method} map (class 3)" in spec


# ------------------------------------------------------------------------------------------ selection validation
def test_stored_selection_is_checked_against_the_current_model() -> None:
    state = app_module("app.state")
    demo = state.Scope(model="demo", grid=(8, 8), depth=6, heads=3, classes=10, dataset="digits", images=360)
    vitb = state.Scope(model="vitb", grid=(14, 14), depth=12, heads=12, classes=10, dataset="digits", images=360)
    fresh: dict[str, Any] = {}
    assert state.check_selection(fresh, demo) == []
    assert (fresh["patch_row"], fresh["patch_col"], fresh["layer"], fresh["heads"]) == (4, 4, 5, "mean")
    # chosen on the ViT-B model: patch (13, 0), layer 11, head 11, explanation class 9, test image 359
    store = {"patch_row": 13, "patch_col": 0, "layer": 11, "heads": "11", "att_explain_target": 9,
             "image_index": 359}
    notes = state.check_selection(store, demo, previous=vitb)
    assert (store["patch_row"], store["patch_col"]) == (7, 0), "same image position on the 8x8 grid"
    assert store["layer"] == 5 and store["heads"] == "mean"
    assert store["att_explain_target"] == 9 and store["image_index"] == 359, "still valid: kept"
    assert len(notes) == 3 and "14x14" in notes[0] and "(7, 0)" in notes[0]
    assert "Layer 11" in notes[1] and "Head 11" in notes[2]
    # unknown previous scope: range checks only
    store = {"patch_row": 8, "patch_col": 2, "layer": 6, "heads": "2", "att_explain_target": 12, "image_index": 400}
    notes = state.check_selection(store, demo)
    assert (store["patch_row"], store["patch_col"], store["layer"], store["heads"]) == (4, 4, 5, "2")
    assert store["att_explain_target"] == "predicted" and store["image_index"] == 0
    assert [n.split()[0] for n in notes] == ["The", "Layer", "Test", "Explanation"]
    # the same selection in the same scope is left alone
    store = {"patch_row": 1, "patch_col": 7, "layer": 0, "heads": "max", "image_index": 12}
    assert state.check_selection(store, demo, previous=demo) == []
    assert store == {"patch_row": 1, "patch_col": 7, "layer": 0, "heads": "max", "image_index": 12}
    # another data set: the test index is reset
    other = state.Scope(model="demo", grid=(8, 8), depth=6, heads=3, classes=10, dataset="cifar", images=10_000)
    assert "another data set" in state.check_selection(store, other, previous=demo)[0]
    assert store["image_index"] == 0


def test_a_click_from_a_chart_of_another_grid_is_ignored() -> None:
    state = app_module("app.state")
    figures = app_module("app.figures")
    points = [list(figures.patch_customdata(14, 14)[13 * 14 + 5])]
    assert state.grid_click(points, (14, 14)) == ((13, 5), None)
    patch, text = state.grid_click(points, (8, 8))
    assert patch is None and "14x14" in text and "8x8" in text
    assert state.grid_click([[3, 9]], (8, 8))[0] is None, "outside the grid"
    assert state.grid_click([], (8, 8)) == (None, None)


def test_an_invalid_stored_selection_is_reset_with_a_note(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEMO_DIR_ENV, str(demo_dir))
    monkeypatch.setenv(THREADS_ENV, str(torch.get_num_threads()))
    monkeypatch.delenv(CHECKPOINTS_ENV, raising=False)
    at = AppTest.from_file(str(DASHBOARD), default_timeout=TIMEOUT)
    at.session_state["patch_row"], at.session_state["patch_col"] = 9, 1
    at.session_state["heads"] = "7"
    at.session_state["image_index"] = 10**6
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    notes = " ".join(i.value for i in at.info)
    assert "patch (9, 1) is outside the patch grid" in notes and "Head 7" in notes and "Test image 1000000" in notes
    assert "Selected patch (2, 2) at layer 1" in texts(at) and "test image 0" in texts(at)
    at.run()
    assert not any("outside the patch grid" in i.value for i in at.info), "each note is shown once"


def test_default_checkpoints_follow_the_method_registry() -> None:
    from tcpa_core.methods import list_methods

    loading = app_module("app.loading")

    def info(label: str, method: str, family: bool) -> Any:
        return loading.CheckpointInfo(label=label, weights=f"/x/{label}/model.safetensors", method=method,
                                      backbone="vit", fingerprint="f", mtime=0.0, tcpa_family=family)

    baselines, tcpas = list_methods(role="baseline"), list_methods(role="tcpa")
    infos = [info("r-tcpa/best", "r-tcpa", True), info("vpt-deep/best", "vpt-deep", False),
             info("tcpa/last", "tcpa", True), info("vpt-shallow/last", "vpt-shallow", False),
             info("tcpa/best", "tcpa", True), info("vp/best", "vp", False), info("odd/best", "unknown", False)]
    assert baselines.index("vpt-deep") < baselines.index("vp") and tcpas.index("tcpa") < tcpas.index("r-tcpa")
    assert loading.default_choice(infos, tcpa=True) == 4, "best first, then TCPA before R-TCPA"
    assert loading.default_choice(infos, tcpa=False) == 1, "best first, then registry order"
    assert loading.default_choice(infos[:1] + infos[6:], tcpa=False) == 1, "an unregistered method still counts"
    assert loading.default_choice(infos[1:2], tcpa=True) is None
    demo = [info("tcpa/best", "tcpa", True), info("vpt-deep/best", "vpt-deep", False)]
    assert (loading.default_choice(demo, tcpa=False), loading.default_choice(demo, tcpa=True)) == (1, 0)


# ------------------------------------------------------------------------------------------ models view
def test_confusion_numbers_against_independent_counts() -> None:
    import numpy as np
    from sklearn.metrics import confusion_matrix as sk_confusion

    loading = app_module("app.loading")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=200)
    labels[labels == 4] = 5  # class 4 has no images
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 7, size=200))
    matrix = loading.confusion_matrix(labels, preds, 7)
    np.testing.assert_array_equal(matrix, sk_confusion(labels, preds, labels=list(range(7))))
    accuracy = loading.per_class_accuracy(matrix)
    for c in range(7):
        images = np.sum(labels == c)
        if images:
            assert accuracy[c] == pytest.approx(np.sum((labels == c) & (preds == c)) / images)
        else:
            assert np.isnan(accuracy[c])
    first = np.array([[5, 1, 0], [0, 4, 2], [1, 1, 3]])
    second = first.copy()
    second[1] = [0, 5, 1]  # same row sum, one image moved
    second[2] = [1, 1, 3]
    assert loading.differing_rows(first, second).tolist() == [1]
    assert loading.differing_rows(first, first).tolist() == []
    with pytest.raises(ValueError, match="different shapes"):
        loading.differing_rows(first, np.zeros((2, 2)))


def write_history(run: Path, val_acc: list[float], loss_scale: float = 2.0) -> None:
    """A run folder's ``summary.json`` with one history record per validation accuracy (loss ``scale / epoch``)."""
    history = [{"epoch": e + 1, "random_selection": e == 0, "train_loss": loss_scale / (e + 1), "train_acc": 0.1 * e,
                "val_acc": acc, "val_loss": 1.0} for e, acc in enumerate(val_acc)]
    (run / "summary.json").write_text(json.dumps({"history": history, "best_epoch": 2}))


def test_models_view_curves_class_accuracy_and_confusion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from tcpa_core.checkpoint import load_checkpoint
    from tcpa_core.train import evaluate

    demo = write_demo_dir(tmp_path)
    write_history(demo / "tcpa", [0.3, 0.6, 0.5])
    at = start(monkeypatch, demo)
    at.radio(key="view").set_value("models").run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    curves = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = {t.get("name") for t in curves["data"]}
    assert "TCPA: tcpa/best" in names and [t["y"] for t in curves["data"] if t.get("name") == "TCPA: tcpa/best"][1] \
        == [0.3, 0.6, 0.5]
    assert "No training history for vpt-deep/best" in texts(at)
    at.number_input(key="models_images_test").set_value(50).run()
    at.button(key="models_eval").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    bars = charts[1]["data"]
    assert [b["name"] for b in bars] == ["Baseline", "TCPA"] and bars[0]["x"] == [str(c) for c in range(10)]
    # independent: evaluate the TCPA checkpoint on the same stratified images and count per class
    loading = app_module("app.loading")
    dataset = DigitsOnClutter(split="test", transform=build_transforms(
        {**load_checkpoint(demo / "tcpa" / "best").data_config, "input_size": (3, 32, 32)}, train=False))
    indices = loading.stratified_indices(np.asarray(dataset.targets), 50)
    model = load_checkpoint(demo / "tcpa" / "best")
    preds = evaluate(model, torch.utils.data.Subset(dataset, indices.tolist()), return_predictions=True).predictions
    labels = np.asarray(dataset.targets)[indices]
    expected = [float(np.mean(preds.numpy()[labels == c] == c)) for c in range(10)]
    assert bars[1]["y"] == pytest.approx(expected)
    confusion = charts[2]["data"]
    assert len(confusion) == 2 and np.sum(confusion[1]["z"]) == 50
    shapes = charts[2]["layout"].get("shapes", [])
    differing = loading.differing_rows(np.asarray(confusion[0]["z"]), np.asarray(confusion[1]["z"]))
    assert len(shapes) == 2 * len(differing)
    assert f"**{len(differing)} of 10 classes with differing rows**" in texts(at)
    if len(differing):
        table = at.dataframe[-1].value
        assert len(table) == 2 * len(differing) and "pred 0" in table.columns


def test_explanation_exports_name_method_class_and_image(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    export = app_module("app.export")
    attention = app_module("app.views.attention")
    bars: dict[str, tuple[list[Any], str, dict[str, Any]]] = {}

    def recording(figures: list[Any], key: str, stem: str, csv: dict[str, Any] | None = None,
                  heading: str = "Export") -> None:
        bars[key] = (figures, stem, csv or {})
        export.export_bar(figures, key, stem, csv, heading)

    monkeypatch.setattr(attention, "export_bar", recording)
    app.number_input(key="image_index").set_value(4).run()
    app.radio(key="view").set_value("attention").run()
    app.toggle(key="att_explain").set_value(True).run()
    app.selectbox(key="att_explain_method").set_value("attention").run()
    app.selectbox(key="att_explain_target").set_value(3).run()
    assert not app.exception and not app.error, [e.value for e in app.exception]
    figures, stem, tables = bars["att_explain_export"]
    assert stem == "test_image_4_attention_class3"
    assert export.png_bytes(figures[0].matplotlib, dpi=50).startswith(b"\x89PNG")
    map_csv = tables["CSV: map"][1]().decode().splitlines()
    assert map_csv[0] == "model,method,target,row,col,relevance" and len(map_csv) == 1 + 2 * 16
    assert map_csv[1].startswith("Baseline,attention,3,0,0,")
    curve = tables["CSV: curve"][1]().decode().splitlines()
    assert len(curve) == 1 + 2 * 9 and curve[-1].startswith("TCPA,attention,3,1.0,")
    keys = {b.key for b in app.get("download_button")}
    assert {"att_explain_export_png", "att_explain_export_csv_relevance_map",
            "att_explain_export_csv_deletion_curve"} <= keys


def test_a_stale_widget_value_does_not_undo_a_click() -> None:
    """A patch input's value sent by a browser that has not drawn the click's rerun yet belongs to the input's
    old key; its callback must not copy it back over the clicked patch (``state.set_shared``)."""
    import streamlit as st

    state = app_module("app.state")
    names = ("patch_row", "shared_generations")
    try:
        st.session_state["patch_row"] = 1
        stale = state.bound("patch_row")
        assert stale["key"] == "w_patch_row"
        state.select_patch(5, 6)  # the click
        st.session_state[stale["key"]] = 1  # what the browser still shows, sent with the next interaction
        stale["on_change"](*stale["args"])
        assert st.session_state["patch_row"] == 5
        current = state.bound("patch_row")
        assert current["key"] == "w_patch_row_1" and st.session_state["w_patch_row_1"] == 5
        st.session_state[current["key"]] = 3  # the user edits the input that is shown now
        current["on_change"](*current["args"])
        assert st.session_state["patch_row"] == 3
    finally:
        for name in (*names, "patch_col", "w_patch_row", "w_patch_row_1"):
            st.session_state.pop(name, None)


# ------------------------------------------------------------------------------------------ figures drawn as pictures
def decoded(source: str) -> Any:
    """The ``uint8 [H, W, 3]`` pixels of a ``data:image/png;base64,...`` source."""
    import base64

    import numpy as np

    assert source.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGB"))


@pytest.mark.parametrize("smooth", [False, True])
def test_overlay_panels_are_the_blended_maps(smooth: bool) -> None:
    import matplotlib
    import numpy as np
    import torch.nn.functional as F

    figures = app_module("app.figures")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(36, 24, 3), dtype=np.uint8)
    base, tcpa = rng.random((6, 4)) * 0.02, rng.random((6, 4)) * 0.03
    panels, bars = figures.overlay_compare_panels(image, [("Baseline", base), ("TCPA", tcpa)], smooth)
    zmax = float(tcpa.max())
    diff = tcpa - base
    bound = float(np.abs(diff).max())
    assert [p.name for p in panels] == ["Baseline", "TCPA", "TCPA minus Baseline"]
    for panel, grid, lo, hi, cmap, alpha in ((panels[0], base, 0.0, zmax, "inferno", 0.6),
                                            (panels[1], tcpa, 0.0, zmax, "inferno", 0.6),
                                            (panels[2], diff, -bound, bound, "RdBu_r", 0.75)):
        scaled = torch.tensor((grid - lo) / (hi - lo), dtype=torch.float32)[None, None]
        if smooth:
            up = F.interpolate(scaled, size=(36, 24), mode="bilinear", align_corners=False)[0, 0].numpy()
        else:
            up = np.repeat(np.repeat(scaled[0, 0].numpy(), 6, axis=0), 6, axis=1)
        colours = matplotlib.colormaps[cmap](np.clip(up, 0, 1))[..., :3] * 255
        want = np.round((1 - alpha) * image + alpha * colours)
        assert np.abs(panel.picture.astype(int) - want.astype(int)).max() <= 1
        np.testing.assert_allclose(panel.values, grid)
    assert [(b.cmap, b.lo, b.hi, b.after) for b in bars] == [("inferno", 0.0, zmax, 1), ("RdBu_r", -bound, bound, 2)]

    fig = figures.overlay_compare_figure(panels, bars, (6, 4), (2, 1), "t")
    pictures = [t for t in fig.data if t.type == "image"]
    markers = [t for t in fig.data if t.type == "scatter" and t.customdata is not None]
    assert len(pictures) == 3 and len(markers) == 3
    for trace, panel in zip(pictures, panels, strict=True):
        assert np.array_equal(decoded(trace.source), panel.picture)
        assert (trace.x0, trace.dx, trace.y0, trace.dy) == (4 / 24 / 2 - 0.5, 4 / 24, 6 / 36 / 2 - 0.5, 6 / 36)
    for trace, grid in zip(markers, (base, tcpa, diff), strict=True):
        custom = np.asarray(trace.customdata)
        assert custom.shape == (24, 5) and custom[4 * 1 + 3, :4].tolist() == [1, 3, 6, 4]
        np.testing.assert_allclose(custom[:, 4], grid.ravel())
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert [(float(min(t.y)), float(max(t.y))) for t in heatmaps] == [(0.0, zmax), (-bound, bound)]


def test_patch_panel_data_is_what_the_component_draws() -> None:
    import matplotlib
    import numpy as np

    figures = app_module("app.figures")
    patch_panels = app_module("app.patch_panels")
    rng = np.random.default_rng(1)
    values = rng.random((3, 5)) - 0.5
    picture = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    panels = [figures.PatchPanel("A", picture, values, "+.3f"), figures.PatchPanel("", picture[::-1])]
    bars = [figures.ColourBar("RdBu_r", -0.25, 0.75, "difference", 0)]
    data = patch_panels.panel_data(panels, (3, 5), (2, 4), bars, title="t", lines=True, height=120, revision=7)
    assert data["grid"] == [3, 5] and data["selected"] == [2, 4] and data["size"] == [200, 120]
    assert (data["title"], data["lines"], data["revision"]) == ("t", True, 7)
    assert np.array_equal(decoded(data["panels"][0]["src"]), picture)
    assert np.array_equal(decoded(data["panels"][1]["src"]), picture[::-1])
    shown = data["panels"][0]["values"]
    assert len(shown) == 15 and shown[1 * 5 + 3] == format(values[1, 3], "+.3f")
    assert data["panels"][1]["values"] is None
    bar = data["bars"][0]
    assert bar["ticks"] == ["0.75", "0.25", "-0.25"] and bar["after"] == 0
    stops = [matplotlib.colors.to_hex(matplotlib.colormaps["RdBu_r"](v)) for v in np.linspace(0, 1, 16)]
    assert bar["gradient"] == f"linear-gradient(to top, {', '.join(stops)})"


@pytest.mark.parametrize("log", [False, True])
def test_matrix_panels_are_the_coloured_weights(log: bool) -> None:
    import csv

    import matplotlib
    import numpy as np

    from tcpa_core import TokenLayout

    figures = app_module("app.figures")
    layout = TokenLayout(num_prefix=1, num_cls_prompt_keys=2, num_image_prompt_keys=3, grid_size=(2, 3))
    rng = np.random.default_rng(1)
    first, second = (rng.random((layout.num_queries, layout.num_keys)) for _ in range(2))
    first[2, 1] = 0.0
    panels = [("Baseline", first, layout), ("TCPA", second, layout)]
    fig = figures.matrix_figure(panels, "t", log)
    pictures = [t for t in fig.data if t.type == "image"]
    shown = [np.where(m > 0, np.log10(np.maximum(m, 1e-12)), np.nan) if log else m for m in (first, second)]
    lo = min(float(np.nanmin(v)) for v in shown)
    hi = max(float(np.nanmax(v)) for v in shown)
    for trace, values in zip(pictures, shown, strict=True):
        colours = matplotlib.colormaps["viridis"](np.clip((np.nan_to_num(values) - lo) / (hi - lo), 0, 1))[..., :3]
        want = np.where(np.isnan(values)[..., None], 255, np.round(colours * 255))
        assert np.abs(decoded(trace.source).astype(int) - want.astype(int)).max() <= 1
    assert (decoded(pictures[0].source)[2, 1] == 255).all() == log
    assert fig.layout.xaxis.ticktext[:4] == ("CLS", "cls 0", "cls 1", "img 0")
    bar = [t for t in fig.data if t.type == "heatmap"][0]
    assert (float(min(bar.y)), float(max(bar.y))) == pytest.approx((lo, hi))
    rows = list(csv.DictReader(io.StringIO(figures.matrix_csv(panels).decode())))
    assert len(rows) == 2 * first.size
    cell = next(r for r in rows if r["model"] == "TCPA" and r["query_row"] == "3" and r["key_column"] == "7")
    assert (cell["query"], cell["key"], float(cell["weight"])) == ("patch 0,2", "patch 0,1", second[3, 7])


def test_remembered_builds_once_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    state = app_module("app.state")
    monkeypatch.setattr(state.st, "session_state", {})
    built: list[int] = []

    def build(value: int) -> Any:
        built.append(value)
        return {"value": value}

    first = state.remembered("chart", ("a", 1), lambda: build(1))
    assert state.remembered("chart", ("a", 1), lambda: build(2)) is first
    assert state.remembered("chart", ("a", 2), lambda: build(3)) == {"value": 3}
    assert state.remembered("other", ("a", 2), lambda: build(4)) == {"value": 4}
    assert built == [1, 3, 4]


def test_selection_table_html_writes_every_rank() -> None:
    import re

    import numpy as np

    figures = app_module("app.figures")
    assign = [[4, 0, 2], [1, 4, 3]]
    html = figures.selection_table_html(np.array(assign), 5, "t", highlight=1)
    cells = re.findall(r"<td title='layer (\d), img (\d): ([^']*)'[^>]*>([^<]*)</td>", html)
    assert len(cells) == 2 * 5
    for layer, entry, tip, text in cells:
        chosen = assign[int(layer)]
        want = str(chosen.index(int(entry)) + 1) if int(entry) in chosen else ""
        assert text == want and tip == (f"rank {want}" if want else "not selected")
    rows = re.findall(r"<tr style='([^']*)'>", html)
    assert ["outline" in r for r in rows] == [False, True]


def test_prompt_share_html_draws_both_models_on_one_scale() -> None:
    import re

    figures = app_module("app.figures")
    tcpa, base = [("img 3", 0.02), ("img 1", 0.005)], [("prompt 0", 0.04), ("prompt 1", 0.0)]
    html = figures.prompt_share_html(tcpa, base, "t", "TCPA", "baseline")
    bars = re.findall(r"title='([^:]+): ([0-9.]+) of the row'.*?width:([0-9.]+)%", html)
    assert [(label, float(value)) for label, value, _ in bars] == [*tcpa, *base]
    assert [float(width) for _, _, width in bars] == [50.0, 12.5, 100.0, 0.0]
    assert "TCPA" in html and "baseline" in html
    assert "baseline" not in figures.prompt_share_html(tcpa, None, "t", "TCPA", "baseline")


def test_tsne_figure_is_one_trace_with_every_point_named() -> None:
    import numpy as np

    figures = app_module("app.figures")
    embedding = np.arange(12, dtype=float).reshape(6, 2)
    labels, predictions = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0])
    indices = np.array([10, 11, 12, 13, 14, 15])
    fig = figures.tsne_figure(embedding, labels, predictions, indices, ["a", "b", "c"], 13, "t")
    points, ring = fig.data
    assert [list(c) for c in points.customdata] == [[10, "a", "a"], [11, "b", "a"], [12, "b", "b"],
                                                     [13, "b", "b"], [14, "c", "c"], [15, "a", "c"]]
    assert list(points.marker.symbol) == ["circle", "x", "circle", "circle", "circle", "x"]
    colours = figures.tsne_class_colours(labels)
    assert list(points.marker.color) == [colours[c] for c in labels]
    assert (ring.x, ring.y) == ((6.0,), (7.0,))
    legend = figures.tsne_legend_html(labels, ["a", "b", "c"])
    assert all(f"class {n}" in legend for n in "abc") and "misclassified" in legend
    assert len(figures.tsne_figure(embedding, labels, predictions, indices, [], None, "t").data) == 1
