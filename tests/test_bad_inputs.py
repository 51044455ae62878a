"""Bad inputs and faults: every one ends in one ``error: ...`` line (exit 2) or a named TCPAError, and no run is
ever lost (sha256 of every file of the finished runs is unchanged after each refused command).

One tiny trained run per method is shared by the whole module (depth-2, width-64 ViT on 32 px digits).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tcpa_core import TCPAError
from tcpa_core.checkpoint import check_same_backbone, load_checkpoint
from tcpa_core.data.transforms import load_image, to_rgb
from tcpa_core.errors import BackboneMismatchError, RunLockedError
from tcpa_core.run_lock import LOCK_FILE, RunLock
from tcpa_viz.cli import main

ARCH = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
OTHER_ARCH = dict(ARCH, patch_size=16)  # another patch grid (2x2 instead of 4x4)
POOLS = ["--cls-pool-size", "4", "--image-pool-size", "4", "--cls-topk", "2", "--image-topk", "2"]
CORE_ROW_MARKS: tuple[Any, ...] = ()  # rows checked by tcpa_core's own boundary validation (core branch)


def _weights(path: Path, arch: dict[str, Any], seed: int) -> Path:
    torch.manual_seed(seed)
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=0, **arch).state_dict(), path)
    return path


def _tiny(weights: Path, arch: dict[str, Any] = ARCH) -> list[str]:
    return ["--backbone", "vit_tiny_patch16_224", "--backbone-kwargs", json.dumps(arch), "--checkpoint", str(weights)]


def _train_args(r: dict[str, Path], out: Path, *extra: str, weights: Path | None = None,
                arch: dict[str, Any] = ARCH) -> list[str]:
    return ["train", *_tiny(weights or r["weights"], arch), "--dataset", "digits", "--max-samples", "16", "--epochs",
            "1", "--batch-size", "8", *POOLS, "--out", str(out), "--no-progress", *extra]


def _checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _with_meta(src: Path, dst: Path, edit: Callable[[dict[str, Any]], Any] | None = None,
               raw: str | None = None) -> Path:
    """Copy the checkpoint folder ``src`` to ``dst`` with its embedded metadata edited by hand."""
    from safetensors import safe_open

    with safe_open(str(src / "model.safetensors"), framework="pt") as handle:
        meta_text = handle.metadata()["tcpa_meta"]
    tensors = load_file(str(src / "model.safetensors"))
    if raw is None:
        meta = json.loads(meta_text)
        edit(meta)
        raw = json.dumps(meta)
    dst.mkdir(parents=True)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"tcpa_meta": raw})
    return dst


def _png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (value, value // 2, 255 - value)).save(path)
    return path


def _untrained_run(out: Path, weights: Path, arch: dict[str, Any]) -> None:
    """A checkpoint (untrained prompts) on another backbone, saved the way `tcpa-viz train` saves one."""
    from tcpa_core import PromptConfig
    from tcpa_core.checkpoint import save_checkpoint
    from tcpa_viz.cli import _build_model

    source = {"name": "vit_tiny_patch16_224", "pretrained": False, "weights": str(weights), "kwargs": arch}
    model = _build_model(source, PromptConfig(method="vpt-deep", num_prompts=2), 10)
    spec = {"name": "digits", "root": None, "val_fraction": 0.1, "seed": 0, "options": {}, "max_samples": 16}
    save_checkpoint(model, out / "best", {"dataset": spec, "class_names": [str(d) for d in range(10)],
                                          "backbone_source": source})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    r = {"root": root, "weights": _weights(root / "tiny.safetensors", ARCH, 0),
         "other_weights": _weights(root / "other.safetensors", OTHER_ARCH, 1)}
    r["tcpa"], r["vpt"], r["other"] = root / "runs" / "tcpa", root / "runs" / "vpt", root / "runs" / "other"
    assert main(_train_args(r, r["tcpa"], "--seed", "1")) == 0
    assert main(_train_args(r, r["vpt"], "--method", "vpt-deep", "--num-prompts", "4")) == 0
    _untrained_run(r["other"], r["other_weights"], OTHER_ARCH)
    inputs = root / "inputs"
    inputs.mkdir()
    (inputs / "text.pth").write_text("this is a text file, not weights\n")
    torch.save({"x": torch.zeros(1)}, inputs / "weights.pth")
    (inputs / "summary.txt").write_text("not json {")
    for name in ("a", "b"):  # same count as nothing; other class names than the digits
        for i in range(3):
            _png(inputs / "letters" / name / f"{i}.png", 40 * i)
    for i in range(4):
        _png(inputs / "one_class" / "only" / f"{i}.png", 50 * i)
    for name in ("c0", "c1"):
        for i in range(4):
            _png(inputs / "corrupt" / name / f"{i}.png", 30 * i)
    for i in range(4):  # every image of one class is cut short, so the training split surely meets one
        (inputs / "corrupt" / "c1" / f"{i}.png").write_bytes(_png(inputs / "x.png").read_bytes()[:60])
    best = r["tcpa"] / "best"
    edited = root / "edited"
    _with_meta(best, edited / "bad_json", raw='{"format": "tcpa-checkpoint", "num_classes": ')
    _with_meta(best, edited / "wrong_type", lambda m: m.update(num_classes="ten"))
    _with_meta(best, edited / "unknown_method", lambda m: m["prompt_config"].update(method="nope"))
    _with_meta(best, edited / "missing_field", lambda m: m.pop("prompt_config"))
    _with_meta(best, edited / "class_names", lambda m: m.update(class_names=["0", "1"]))
    r["inputs"], r["edited"] = inputs, edited
    r["scratch"] = root / "scratch"
    return r


def _one_line_error(argv: list[str], capsys) -> str:
    """Run the CLI in this process; assert exit status 2 and a single ``error:`` line; return it."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------ the table
# (id, argv from the fixture's paths, expected fragment of the error line)
T = "tcpa"
CLI_CASES: list[tuple[str, Callable[[dict[str, Path]], list[str]], str]] = [
    ("train-over-finished-run", lambda r: _train_args(r, r[T]), "already holds a finished tcpa run"),
    ("train-over-finished-run-default-names-files", lambda r: _train_args(r, r["vpt"]), "best/, last/"),
    ("train-resume-and-force", lambda r: _train_args(r, r[T], "--resume", "--force"), "not allowed with"),
    ("train-one-class-dataset", lambda r: [*_train_args(r, r["scratch"] / "one"), "--dataset", "imagefolder",
                                           "--data-root", str(r["inputs"] / "one_class")], "at least two"),
    ("train-val-fraction-0", lambda r: _train_args(r, r["scratch"] / "v", "--val-fraction", "0"), "--val-fraction"),
    ("train-val-fraction-1", lambda r: _train_args(r, r["scratch"] / "v", "--val-fraction", "1"), "< 1"),
    ("train-val-fraction-nan", lambda r: _train_args(r, r["scratch"] / "v", "--val-fraction", "nan"), "finite"),
    ("figure-layer-out-of-range", lambda r: ["figure", "1", "--baseline", str(r["vpt"]), "--tcpa", str(r[T]),
                                             "--out", str(r["scratch"] / "f"), "--layer", "2"], "--layer 2"),
    ("figure-layer-negative-out-of-range", lambda r: ["figure", "3", "--baseline", str(r["vpt"]), "--tcpa",
                                                      str(r[T]), "--out", str(r["scratch"] / "f"), "--layer", "-3"],
     "has 2 blocks"),
    ("figure-index-out-of-range", lambda r: ["figure", "1", "--baseline", str(r["vpt"]), "--tcpa", str(r[T]),
                                             "--out", str(r["scratch"] / "f"), "--index", "100000"], "--index 100000"),
    ("figure-index-negative", lambda r: ["figure", "3", "--index", "-1"], "--index: must be >= 0"),
    ("rank-num-images-0", lambda r: ["rank", "--num-images", "0"], "--num-images: must be >= 1"),
    ("figure5-perplexity-0", lambda r: ["figure", "5", "--perplexity", "0"], "--perplexity: must be"),
    ("figure5-perplexity-inf", lambda r: ["figure", "5", "--perplexity", "inf"], "finite"),
    ("eval-batch-size-0", lambda r: ["eval", "--model", str(r[T]), "--batch-size", "0"], "--batch-size: must be"),
    ("train-backbone-kwargs-timm-rejects", lambda r: ["train", "--backbone", "vit_tiny_patch16_224",
                                                      "--backbone-kwargs", json.dumps({**ARCH, "no_such_option": 1}),
                                                      "--max-samples", "8", "--out", str(r["scratch"] / "k")],
     "no_such_option"),
    ("train-backbone-kwargs-not-json", lambda r: ["train", "--backbone-kwargs", "{img_size: 3"], "not valid JSON"),
    ("train-device-unknown", lambda r: _train_args(r, r["scratch"] / "d", "--device", "tpu9"),
     "Unknown device 'tpu9'"),
    ("eval-device-unknown", lambda r: ["eval", "--model", str(r[T]), "--device", "gpu"], "Unknown device 'gpu'"),
    ("figure-summary-not-json", lambda r: ["figure", "1", "--summary", str(r["inputs"] / "summary.txt")],
     "is not a JSON file"),
    ("figure-summary-binary", lambda r: ["figure", "1", "--summary", str(r["weights"])], "is not a JSON file"),
    ("train-out-unwritable", lambda r: _train_args(r, Path("/proc/tcpa-no-such/run")), "cannot be written"),
    ("train-out-is-a-file", lambda r: _train_args(r, r["weights"]), "is a file"),
    ("train-out-under-a-file", lambda r: _train_args(r, r["weights"] / "run"), "is a file"),
    ("eval-json-unwritable", lambda r: ["eval", "--model", str(r[T]), "--json", "/proc/tcpa-no-such/e.json"],
     "cannot be written"),
    ("eval-json-is-a-folder", lambda r: ["eval", "--model", str(r[T]), "--json", str(r["inputs"])], "is a folder"),
    ("figure-out-is-a-file", lambda r: ["figure", "1", "--out", str(r["weights"])], "is a file"),
    ("app-port-too-large", lambda r: ["app", "--port", "65536"], "--port: must be in 1..65535"),
    ("app-port-negative", lambda r: ["app", "--port", "-1"], "--port: must be in 1..65535"),
    ("app-port-0", lambda r: ["app", "--port", "0"], "--port: must be in 1..65535"),
    ("worker-error-names-the-file", lambda r: [*_train_args(r, r["scratch"] / "w", "--num-workers", "1"),
                                               "--dataset", "imagefolder", "--data-root", str(r["inputs"] / "corrupt")],
     ".png is truncated or corrupt"),
    ("eval-class-names-differ", lambda r: ["eval", "--model", str(r[T]), "--dataset", "imagefolder", "--data-root",
                                           str(r["inputs"] / "letters"), "--no-progress"], "--ignore-class-names"),
    ("meta-bad-json", lambda r: ["eval", "--model", str(r["edited"] / "bad_json")], "not valid JSON"),
    ("meta-wrong-type", lambda r: ["eval", "--model", str(r["edited"] / "wrong_type")], "num_classes must be"),
    ("meta-unknown-method", lambda r: ["eval", "--model", str(r["edited"] / "unknown_method")],
     "prompt_config is not valid"),
    ("meta-missing-field", lambda r: ["eval", "--model", str(r["edited"] / "missing_field")],
     "prompt_config are missing"),
    ("meta-class-names-do-not-fit", lambda r: ["eval", "--model", str(r["edited"] / "class_names")],
     "class_names must be a list of 10"),
    ("model-pth-is-not-reported-missing", lambda r: ["eval", "--model", str(r["inputs"] / "weights.pth")],
     "is a PyTorch weight file, not a tcpa-viz prompt checkpoint"),
    ("text-is-not-reported-as-pickles", lambda r: _train_args(r, r["scratch"] / "t", weights=r["inputs"] / "text.pth"),
     "not a file written by torch.save"),
    ("figure-different-backbones", lambda r: ["figure", "1", "--baseline", str(r["other"]), "--tcpa", str(r[T]),
                                              "--out", str(r["scratch"] / "f")], "different backbones"),
    ("rank-different-backbones", lambda r: ["rank", "--baseline", str(r["other"]), "--tcpa", str(r[T]), "--out",
                                            str(r["scratch"] / "f")], "patch grid 2x2 vs 4x4"),
    ("train-epochs-0", lambda r: _train_args(r, r["scratch"] / "e", "--epochs", "0"), "--epochs: must be >= 1"),
    ("train-lr-negative", lambda r: _train_args(r, r["scratch"] / "e", "--lr", "-1"), "--lr: must be"),
    ("train-max-samples-0", lambda r: _train_args(r, r["scratch"] / "e", "--max-samples", "0"), "--max-samples"),
    ("train-num-workers-negative", lambda r: _train_args(r, r["scratch"] / "e", "--num-workers", "-1"),
     "--num-workers"),
    ("eval-model-missing", lambda r: ["eval", "--model", str(r["scratch"] / "nothing")], "does not exist"),
    ("train-resume-other-config", lambda r: _train_args(r, r[T], "--seed", "1", "--lr", "0.5", "--resume"),
     "different run"),
]
if not torch.cuda.is_available():
    CLI_CASES.append(("train-device-cuda-without-gpu", lambda r: _train_args(r, r["scratch"] / "c", "--device",
                                                                             "cuda"), "no usable CUDA GPU"))
    CLI_CASES.append(("eval-device-cuda-without-gpu", lambda r: ["eval", "--model", str(r[T]), "--device", "cuda:0"],
                      "no usable CUDA GPU"))


CORE_ROWS = {"train-backbone-kwargs-timm-rejects"}  # build_model's own validation (tcpa_core.model)


@pytest.mark.parametrize("argv, fragment", [
    pytest.param(*c[1:], id=c[0], marks=CORE_ROW_MARKS if c[0] in CORE_ROWS else ()) for c in CLI_CASES])
def test_cli_bad_input_is_one_line_and_changes_nothing(runs, capsys, argv, fragment):
    shutil.rmtree(runs["scratch"], ignore_errors=True)
    before = _checksums(runs["root"] / "runs")
    line = _one_line_error(argv(runs), capsys)
    assert fragment in line, line
    assert _checksums(runs["root"] / "runs") == before
    assert not (runs["scratch"]).exists() or not any(runs["scratch"].rglob("*.safetensors"))


# ------------------------------------------------------------------------------------------ library boundary
def _tiny_model(method: str = "tcpa", **cfg: Any) -> Any:
    from timm.models.vision_transformer import VisionTransformer

    from tcpa_core import PromptConfig, build_model

    torch.manual_seed(0)
    vit = VisionTransformer(num_classes=0, **ARCH)
    defaults = dict(cls_pool_size=4, image_pool_size=4, cls_topk=2, image_topk=2) if method == "tcpa" else {}
    return build_model(vit, PromptConfig(method=method, **{**defaults, **cfg}), num_classes=3).eval()


def _prompt_config(**kw: Any) -> Any:
    from tcpa_core import PromptConfig

    return PromptConfig(**kw)


def _build(**kw: Any) -> Any:
    from timm.models.vision_transformer import VisionTransformer

    from tcpa_core import PromptConfig, build_model

    return build_model(VisionTransformer(num_classes=0, **ARCH), PromptConfig(method="vpt-deep"), **kw)


def _capture(model: Any, **kw: Any) -> Any:
    from tcpa_core import capture

    with capture(model, **kw) as cache:
        model(torch.zeros(1, 3, 32, 32))
    return cache


def _double_input() -> None:
    """float64 images are cast (same logits) or refused by a named error that names the dtype."""
    model = _tiny_model()
    x = torch.randn(2, 3, 32, 32)
    try:
        out = model(x.double())
    except TCPAError as exc:
        assert "float64" in str(exc)
        return
    torch.testing.assert_close(out.float(), model(x), atol=1e-5, rtol=0)


def _names_as_string() -> None:
    cache = _capture(_tiny_model(), names="attn")  # one name, not the letters 'a', 't', 't', 'n'
    assert cache["attn", 0].shape[:2] == (1, 2)


def _layers_iterator() -> None:
    cache = _capture(_tiny_model(), layers=iter([0, -1]), names=["mask"])
    assert cache["mask", 0].dtype == torch.bool and cache["mask", 1].dtype == torch.bool


LIBRARY_REFUSALS: list[tuple[str, Callable[[], Any], str, Any]] = [
    ("promptconfig-topk-string", lambda: _prompt_config(method="tcpa", cls_topk="3"), "cls_topk", CORE_ROW_MARKS),
    ("promptconfig-pool-negative", lambda: _prompt_config(method="tcpa", image_pool_size=-1), "image_pool_size", ()),
    ("promptconfig-dropout-2", lambda: _prompt_config(method="tcpa", prompt_dropout=2.0), "prompt_dropout", ()),
    ("promptconfig-unknown-method", lambda: _prompt_config(method="nope"), "nope", ()),
    ("build-model-num-classes-0", lambda: _build(num_classes=0), "num_classes", CORE_ROW_MARKS),
    ("build-model-num-classes-string", lambda: _build(num_classes="10"), "num_classes", CORE_ROW_MARKS),
    ("build-model-timm-rejects-kwargs", lambda: __import__("tcpa_core").build_model(
        "vit_tiny_patch16_224", _prompt_config(method="vpt-deep"), num_classes=3, no_such_option=1),
     "no_such_option", CORE_ROW_MARKS),
    ("capture-not-a-promptedvit", lambda: _capture(torch.nn.Linear(2, 2)), "PromptedViT", CORE_ROW_MARKS),
    ("capture-unknown-name", lambda: _capture(_tiny_model(), names=["atn"]), "atn", CORE_ROW_MARKS),
    ("capture-layer-out-of-range", lambda: _capture(_tiny_model(), layers=[5]), "5", CORE_ROW_MARKS),
    ("check-same-backbone-grid", lambda: check_same_backbone(_tiny_model(), _other_model()), "patch grid", ()),
]
LIBRARY_ACCEPTS: list[tuple[str, Callable[[], None], Any]] = [
    ("input-float64-cast-or-refused-by-name", _double_input, CORE_ROW_MARKS),
    ("capture-names-as-one-string", _names_as_string, CORE_ROW_MARKS),
    ("capture-layers-any-iterable", _layers_iterator, ()),
]


def _other_model() -> Any:
    from timm.models.vision_transformer import VisionTransformer

    from tcpa_core import PromptConfig, build_model

    return build_model(VisionTransformer(num_classes=0, **OTHER_ARCH), PromptConfig(method="vpt-deep"), num_classes=3)


@pytest.mark.parametrize("call, fragment",
                         [pytest.param(c[1], c[2], marks=c[3], id=c[0]) for c in LIBRARY_REFUSALS])
def test_library_bad_input_is_a_named_error(call, fragment):
    with pytest.raises(TCPAError) as info:
        call()
    assert fragment in str(info.value)


@pytest.mark.parametrize("call", [pytest.param(c[1], marks=c[2], id=c[0]) for c in LIBRARY_ACCEPTS])
def test_library_accepts_what_it_documents(call):
    call()


# ------------------------------------------------------------------------------------------ runs never lost
def test_refused_overwrite_keeps_every_file_and_force_replaces(runs, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["vpt"], run)
    before = _checksums(run)
    args = _train_args(runs, run, "--method", "vpt-deep", "--num-prompts", "4")
    line = _one_line_error(args, capsys)
    assert "already holds a finished vpt-deep run" in line and "--force" in line
    assert _checksums(run) == before
    assert main([*args, "--resume"]) == 0  # same configuration: reused, weights untouched
    assert _checksums(run)["best/model.safetensors"] == before["best/model.safetensors"]
    assert main([*args, "--force", "--seed", "7"]) == 0
    after = _checksums(run)
    assert after["last/model.safetensors"] != before["last/model.safetensors"]
    assert json.loads((run / "summary.json").read_text())["train_config"]["seed"] == 7
    assert load_checkpoint(run / "best").checkpoint_meta["epoch"] == 1
    assert not (run / LOCK_FILE).exists()


# Loads tcpa_core/run_lock.py (and errors.py) without the package __init__, so the process starts in
# a fraction of a second instead of importing torch.
_LIGHT_IMPORT = f"""
import importlib.util, sys, types
package = types.ModuleType("tcpa_core")
package.__path__ = [{str(Path(__file__).resolve().parents[1] / "tcpa_core")!r}]
sys.modules["tcpa_core"] = package
spec = importlib.util.find_spec("tcpa_core.run_lock")
run_lock = importlib.util.module_from_spec(spec)
sys.modules["tcpa_core.run_lock"] = run_lock
spec.loader.exec_module(run_lock)
RunLock = run_lock.RunLock
RunLockedError = sys.modules["tcpa_core.errors"].RunLockedError
"""
_HOLD = _LIGHT_IMPORT + """
import time
with RunLock(sys.argv[1], command="tcpa-viz train --out held"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(folder: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
    return proc


def test_concurrent_writer_is_refused_naming_the_holder(runs, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["tcpa"], run)
    before = _checksums(run)
    holder = _holder(run, 60)
    try:
        for extra in ((), ("--force",), ("--resume",)):
            line = _one_line_error(_train_args(runs, run, "--seed", "1", *extra), capsys)
            assert f"in use by pid {holder.pid} on host {socket.gethostname()}" in line, line
            assert "tcpa-viz train --out held" in line
        with pytest.raises(RunLockedError, match=str(holder.pid)):
            with RunLock(run):
                pass
        assert _checksums(run) == {**before, LOCK_FILE: _checksums(run)[LOCK_FILE]}
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # The holder was killed (SIGKILL): its lock is stale and the next writer takes it over.
    assert (run / LOCK_FILE).exists()
    assert main(_train_args(runs, run, "--seed", "1", "--resume")) == 0
    assert not (run / LOCK_FILE).exists()
    assert _checksums(run)["best/model.safetensors"] == before["best/model.safetensors"]


def test_two_racing_writers_one_wins_one_is_refused(tmp_path):
    folder = tmp_path / "race"
    script = (_LIGHT_IMPORT + "import time\n"
              "try:\n    with RunLock(sys.argv[1]):\n        time.sleep(3)\n    print('won')\n"
              "except RunLockedError as e:\n    print('refused', e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert outs[0].startswith("refused") and "in use by pid" in outs[0] and outs[1] == "won", outs
    assert not (folder / LOCK_FILE).exists()


def test_lock_is_reentrant_and_removed_on_error(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with RunLock(tmp_path / "r"):
            with RunLock(tmp_path / "r"):
                assert (tmp_path / "r" / LOCK_FILE).exists()
            assert (tmp_path / "r" / LOCK_FILE).exists()
            1 / 0  # noqa: B018
    assert not (tmp_path / "r" / LOCK_FILE).exists()


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(), "command": "x"}))
    with RunLock(folder) as lock:
        assert lock.holder()["pid"] == os.getpid()
    other_host = {"pid": 1, "host": "another-host.example", "command": "tcpa-viz train"}
    (folder / LOCK_FILE).write_text(json.dumps(other_host))
    with pytest.raises(RunLockedError, match="another-host.example"):
        RunLock(folder).acquire()


def test_check_same_backbone_accepts_one_backbone_and_refuses_other_weights():
    check_same_backbone(_tiny_model(), _tiny_model("vpt-deep"))
    torch.manual_seed(3)
    with pytest.raises(BackboneMismatchError, match="backbone weights"):
        from timm.models.vision_transformer import VisionTransformer

        from tcpa_core import PromptConfig, build_model

        check_same_backbone(_tiny_model(), build_model(VisionTransformer(num_classes=0, **ARCH),
                                                       PromptConfig(method="vpt-deep"), num_classes=3))


@pytest.mark.slow
def test_demo_refuses_another_configuration_and_keeps_other_methods(tmp_path, capsys):
    demo = tmp_path / "demo"
    base = ["demo", "--out", str(demo), "--epochs", "1", "--max-samples", "8", "--batch-size", "8",
            "--cls-pool-size", "4", "--image-pool-size", "4", "--cls-topk", "2", "--image-topk", "2",
            "--num-prompts", "2", "--no-figures", "--no-progress"]
    assert main([*base, "--methods", "tcpa"]) == 0
    assert main([*base, "--methods", "vpt-deep"]) == 0
    summary = json.loads((demo / "summary.json").read_text())
    assert list(summary["methods"]) == ["vpt-deep", "tcpa"]  # merged, never dropped
    before = _checksums(demo)
    line = _one_line_error([*base, "--methods", "tcpa", "--lr", "0.02"], capsys)
    assert "another configuration (train_config.lr: 0.005 -> 0.02)" in line and "--force" in line
    assert _checksums(demo) == before
    assert main([*base, "--methods", "tcpa", "--lr", "0.02", "--force"]) == 0
    after = json.loads((demo / "summary.json").read_text())
    assert set(after["methods"]) == {"vpt-deep", "tcpa"}
    assert after["methods"]["vpt-deep"] == summary["methods"]["vpt-deep"]
    assert after["methods"]["tcpa"]["train_config"]["lr"] == 0.02


def test_eval_with_ignore_class_names_runs(runs, capsys):
    letters = ["eval", "--model", str(runs["tcpa"]), "--dataset", "imagefolder", "--data-root",
               str(runs["inputs"] / "letters"), "--no-progress", "--ignore-class-names"]
    assert main(letters) == 0
    assert "accuracy" in capsys.readouterr().out


def test_edited_config_json_copy_warns_and_is_not_used(runs, tmp_path, caplog):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(runs["tcpa"] / "best", ckpt)
    meta = json.loads((ckpt / "config.json").read_text())
    meta["class_names"] = ["x"] * 10
    (ckpt / "config.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        model = load_checkpoint(ckpt)
    assert model.checkpoint_meta["class_names"] == [str(d) for d in range(10)]
    assert "differs from the metadata stored" in caplog.text


# ------------------------------------------------------------------------------------------ image modes
def _mode_image(mode: str, level: float) -> Image.Image:
    """A flat image of ``mode`` whose intended brightness is ``level`` in [0, 1] (opaque, gray)."""
    g8 = int(round(level * 255))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return Image.new(mode, (6, 4), int(round(level * 65535)))
    if mode == "I":
        return Image.fromarray(np.full((4, 6), int(round(level * 65535)), dtype=np.int32), mode="I")
    if mode == "F":
        return Image.fromarray(np.full((4, 6), level, dtype=np.float32), mode="F")
    if mode == "1":
        return Image.new("1", (6, 4), 1 if level >= 0.5 else 0)
    values = {"L": g8, "LA": (g8, 255), "La": (g8, 255), "PA": (0, 255), "RGB": (g8,) * 3, "RGBA": (g8, g8, g8, 255),
              "RGBa": (g8, g8, g8, 255), "RGBX": (g8, g8, g8, 0), "CMYK": (0, 0, 0, 255 - g8),
              "YCbCr": (g8, 128, 128), "LAB": (g8, 128, 128), "HSV": (0, 0, g8)}
    if mode in ("P", "PA"):
        image = Image.new(mode, (6, 4), 0 if mode == "P" else (0, 255))
        image.putpalette([g8, g8, g8] * 256)
        return image
    return Image.new(mode, (6, 4), values[mode])


MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I",
         "I;16", "I;16B", "I;16L", "I;16N", "F"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("level", [0.0, 0.02, 0.5, 1.0])
def test_every_pil_mode_converts_with_its_brightness(mode, level):
    if mode == "1":
        level = 0.0 if level < 0.5 else 1.0
    rgb = np.asarray(to_rgb(_mode_image(mode, level))).astype(float) / 255
    tolerance = 0.03 if mode != "LAB" else 0.06  # LAB lightness is not linear in sRGB gray
    expected = level if mode != "LAB" else {0.0: 0.0, 0.02: 0.0, 0.5: 0.47, 1.0: 1.0}[level]
    assert rgb.shape == (4, 6, 3) and abs(rgb.mean() - expected) <= tolerance + (0.02 if mode == "LAB" else 0)


@pytest.mark.parametrize("mode, suffix", [("1", ".png"), ("L", ".png"), ("LA", ".png"), ("P", ".png"),
                                          ("RGB", ".png"), ("RGBA", ".png"), ("I;16", ".png"), ("CMYK", ".tif"),
                                          ("YCbCr", ".jpg"), ("LAB", ".tif"), ("I", ".tif"), ("F", ".tif"),
                                          ("I;16B", ".tif")])
def test_image_files_of_every_savable_mode_load_with_their_brightness(tmp_path, mode, suffix):
    level = 0.25
    path = tmp_path / f"img{suffix}"
    _mode_image(mode, level if mode != "1" else 0.0).save(path)
    got = np.asarray(load_image(path)).astype(float).mean() / 255
    want = {"1": 0.0, "LAB": 0.22}.get(mode, level)
    assert abs(got - want) <= 0.04, (mode, Image.open(path).mode, got)


def test_dark_16_bit_and_wide_float_images_are_not_blown_out():
    dark = Image.new("I;16", (4, 4), 1000)  # 1.5 % of the 16-bit range: must stay dark
    assert np.asarray(to_rgb(dark)).max() <= 5
    wide = Image.fromarray(np.linspace(0, 4000, 16, dtype=np.float32).reshape(4, 4), mode="F")
    out = np.asarray(to_rgb(wide))[..., 0]
    assert out.min() == 0 and out.max() == 255 and 100 < out.mean() < 155  # rescaled, not clipped to white
    nan = Image.fromarray(np.array([[np.nan, 0.5], [np.inf, 0.25]], dtype=np.float32), mode="F")
    assert np.isfinite(np.asarray(to_rgb(nan), dtype=float)).all()
    transparent = Image.new("P", (4, 4), 0)
    transparent.putpalette([0, 0, 0] * 256)
    transparent.info["transparency"] = 0
    assert np.asarray(to_rgb(transparent)).min() == 255  # fully transparent black -> the white background


def test_lock_holder_exiting_normally_removes_its_lock(tmp_path):
    proc = _holder(tmp_path / "h", 0.1)
    assert proc.wait(timeout=60) == 0 and not (tmp_path / "h" / LOCK_FILE).exists()
