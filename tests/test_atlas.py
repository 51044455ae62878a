"""Prompt atlas: counts against an independent recount from ``capture``, NMI against scikit-learn, object
statistics with and without boxes, collapse verdicts, 2 gloo processes against 1."""

from __future__ import annotations

import itertools
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_vit
from sklearn.metrics import normalized_mutual_info_score
from torch.utils.data import Dataset

from tcpa_core import PromptConfig, PromptConfigError, UnsupportedModelError, build_model, capture
from tcpa_viz.atlas import prompt_atlas, prompt_importance
from tcpa_viz.atlas.nmi import nmi_from_table

NC, NI, KC, KI, CLASSES = 6, 7, 3, 2, 4


class Images(Dataset):
    """Random images with labels (``targets``) and, optionally, boxes in input pixels."""

    def __init__(self, n: int, seed: int = 0, boxes: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.targets = torch.randint(0, CLASSES, (n,), generator=g).tolist()
        if boxes:
            x0 = torch.randint(0, 16, (n,), generator=g)
            y0 = torch.randint(0, 16, (n,), generator=g)
            self.box_array = torch.stack([x0, y0, x0 + 14, y0 + 12], 1).numpy().astype(float)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self.targets[i]


def make_model(seed: int = 0, collapsed: bool = False) -> torch.nn.Module:
    cfg = PromptConfig(method="tcpa", cls_pool_size=NC, image_pool_size=NI, cls_topk=KC, image_topk=KI,
                       prompt_dropout=0.0)
    torch.manual_seed(seed + 100)
    model = build_model(tiny_vit(seed=seed, num_classes=0), cfg, num_classes=CLASSES).eval()
    if collapsed:  # every token of every image is the same vector: selection cannot depend on the input
        with torch.no_grad():
            model.backbone.patch_embed.proj.weight.zero_()
            model.backbone.pos_embed.zero_()
    return model


def _object_mask(box: np.ndarray, grid: int = 4, size: int = 32) -> np.ndarray:
    step = size / grid
    out = np.zeros(grid * grid, bool)
    for r in range(grid):
        for c in range(grid):
            cy, cx = (r + 0.5) * step, (c + 0.5) * step
            out[r * grid + c] = box[0] <= cx < box[2] and box[1] <= cy < box[3]
    return out


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def test_counts_equal_a_recount_from_capture():
    model, data = make_model(), Images(11)
    atlas = prompt_atlas(model, data, batch_size=3, boxes=data.box_array, progress=False, num_shuffles=2)
    with torch.no_grad(), capture(model, names=["cls_assign", "image_assign"]) as cache:
        model(data.images)
    labels = np.asarray(data.targets)
    masks = np.stack([_object_mask(b) for b in data.box_array])
    for layer in range(model.depth):
        for pool, assign, size, k in (("cls", cache["cls_assign", layer][:, None], NC, KC),
                                      ("image", cache["image_assign", layer], NI, KI)):
            c, stats = atlas.counts[(layer, pool)], atlas.block_stats(layer, pool)
            a = assign.numpy()
            n_img, n_tok = a.shape[:2]
            rank = np.zeros((k, size))
            cls_any, cls_top = np.zeros((CLASSES, size)), np.zeros((CLASSES, size))
            pos = np.zeros((n_tok, size))
            co = np.zeros((size, size))
            region, region_top = np.zeros((2, size)), np.zeros((2, size))
            sets, set_ids, top_entries, tok_labels, tok_regions = [], {}, [], [], []
            for i in range(n_img):
                for t in range(n_tok):
                    chosen = a[i, t].tolist()
                    for r, e in enumerate(chosen):
                        rank[r, e] += 1
                        cls_any[labels[i], e] += 1
                        pos[t, e] += 1
                        if pool == "image":
                            region[0 if masks[i, t] else 1, e] += 1
                    cls_top[labels[i], chosen[0]] += 1
                    if pool == "image":
                        region_top[0 if masks[i, t] else 1, chosen[0]] += 1
                        tok_regions.append(int(masks[i, t]))
                    for e1, e2 in itertools.product(chosen, chosen):
                        co[e1, e2] += 1
                    s = frozenset(chosen)
                    sets.append(s)
                    set_ids.setdefault(s, len(set_ids))
                    top_entries.append(chosen[0])
                    tok_labels.append(labels[i])
            np.testing.assert_array_equal(c.arrays["rank_counts"], rank)
            np.testing.assert_array_equal(c.selected, rank.sum(0))
            np.testing.assert_array_equal(c.top1, rank[0])
            np.testing.assert_allclose(c.rank_weighted, ((k - np.arange(k)) / k) @ rank)
            np.testing.assert_array_equal(c.arrays["class_counts"], cls_any)
            np.testing.assert_array_equal(c.arrays["class_top1"], cls_top)
            np.testing.assert_array_equal(c.arrays["position_counts"], pos)
            np.testing.assert_array_equal(c.arrays["coselect"], co)
            assert stats["distinct_sets"] == len(set_ids)
            ids = [set_ids[s] for s in sets]
            assert stats["nmi_class_set"]["nmi"] == pytest.approx(normalized_mutual_info_score(tok_labels, ids))
            assert stats["nmi_class_top1"]["nmi"] == pytest.approx(
                normalized_mutual_info_score(tok_labels, top_entries))
            if pool == "cls":
                pairs = [_jaccard(x, y) for x, y in itertools.combinations(sets, 2)]
                assert stats["jaccard"] == pytest.approx(np.mean(pairs)) and stats["jaccard_exact"]
                assert stats["nmi_object_top1"] is None
            else:
                np.testing.assert_array_equal(c.arrays["region_counts"], region)
                np.testing.assert_array_equal(c.arrays["region_top1"], region_top)
                within = [np.mean([_jaccard(set(a[i, s]), set(a[i, t]))
                                   for s, t in itertools.combinations(range(n_tok), 2)]) for i in range(n_img)]
                assert stats["jaccard"] == pytest.approx(np.mean(within))
                assert stats["nmi_object_top1"]["nmi"] == pytest.approx(
                    normalized_mutual_info_score(tok_regions, top_entries))
                for key in ("nmi_class_set", "nmi_class_top1", "nmi_object_top1"):
                    assert 0.0 <= stats[key]["chance"] <= 1.0
    rows = atlas.usage_rows()
    assert len(rows) == model.depth * (NC + NI)
    assert {"layer", "pool", "entry", "selected", "top1", "rank_weighted"} <= set(rows[0])


def test_gallery_is_the_top_n_of_the_captured_similarities():
    model, data = make_model(), Images(9)
    atlas = prompt_atlas(model, data, batch_size=2, progress=False, num_shuffles=0, gallery_size=4)
    with torch.no_grad(), capture(model, names=["cls_sim", "sim", "image_assign"]) as cache:
        model(data.images)
    for layer in range(model.depth):
        for pool, name in (("cls", "cls_sim"), ("image", "sim")):
            sim = cache[name, layer].numpy()  # [B, T, N]
            records = atlas.gallery_records(layer, pool)
            for e, gallery in enumerate(records):
                top = np.sort(sim[:, :, e].ravel())[::-1][:4]
                # the best similarities, each the captured one of its (image, patch), no pair twice (batches of 2
                # and of 9 differ by float rounding, so near-ties may come in either order)
                np.testing.assert_allclose([g["similarity"] for g in gallery], top, atol=1e-6)
                for g in gallery:
                    assert sim[g["image"], max(g["patch"], 0), e] == pytest.approx(g["similarity"], abs=1e-6)
                    assert (g["patch"] == -1) == (pool == "cls")
                assert len({(g["image"], g["patch"]) for g in gallery}) == 4
                if pool == "image":
                    assign = cache["image_assign", layer]
                    for g in gallery:
                        chosen = assign[g["image"], g["patch"]].tolist()
                        assert g["rank"] == (chosen.index(e) if e in chosen else -1)


def test_nmi_from_table_matches_scikit_learn():
    rng = np.random.default_rng(0)
    for n_a, n_b in ((3, 4), (1, 5), (1, 1), (6, 2)):
        x, y = rng.integers(0, n_a, 200), rng.integers(0, n_b, 200)
        y[:50] = x[:50] % n_b  # some dependence
        table = np.zeros((n_a, n_b))
        np.add.at(table, (x, y), 1)
        assert nmi_from_table(table) == pytest.approx(normalized_mutual_info_score(x, y), abs=1e-12)


def test_dataset_without_boxes_skips_object_statistics_with_a_note():
    model, data = make_model(), Images(5, boxes=False)
    atlas = prompt_atlas(model, data, batch_size=4, progress=False, num_shuffles=1)
    assert not atlas.has_boxes
    assert any("object statistics skipped" in note for note in atlas.notes)
    stats = atlas.block_stats(0, "image")
    assert stats["nmi_object_top1"] is None
    assert all(row["object_selected"] is None for row in atlas.usage_rows())
    assert atlas.to_json()["meta"]["has_boxes"] is False


def test_collapse_is_named_on_a_collapsed_model_and_not_on_a_random_one():
    data = Images(8)
    collapsed = prompt_atlas(make_model(collapsed=True), data, batch_size=4, progress=False, num_shuffles=1)
    for stats in collapsed.diagnostics():
        assert stats["distinct_sets"] == 1 and stats["dominant_set_share"] == 1.0
        assert stats["collapse"]["collapsed"] and "selection collapse" in stats["collapse"]["message"]
        assert set(stats["collapse"]["kinds"]) == {"set", "top1"}
    normal = prompt_atlas(make_model(), data, batch_size=4, progress=False, num_shuffles=1)
    stats = normal.block_stats(0, "image")
    assert stats["distinct_sets"] > 2 and not stats["collapse"]["collapsed"], stats["collapse"]


@pytest.mark.parametrize(("classes", "expected"), [
    (["zero", "one", "two", "three"], ["zero", "one", "two", "three"]),
    (CLASSES, None),  # a count under the name, not names
    (["a", "b"], None),  # names of another number of classes
])
def test_class_names_are_taken_only_from_one_name_per_class(classes, expected):
    data = Images(4, boxes=False)
    data.classes = classes
    atlas = prompt_atlas(make_model(), data, batch_size=4, progress=False, num_shuffles=0, gallery_size=0)
    assert atlas.class_names == expected


def test_bad_arguments_raise_named_errors():
    data = Images(3)
    with pytest.raises(PromptConfigError, match="out of range"):
        prompt_atlas(make_model(), data, layers=[5], progress=False)
    cfg = PromptConfig(method="vpt-deep", num_prompts=2)
    with pytest.raises(UnsupportedModelError, match="token matching"):
        prompt_atlas(build_model(tiny_vit(num_classes=0), cfg, num_classes=CLASSES), data, progress=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(atlas) -> dict:
    out = {"usage": atlas.usage_rows(), "stats": atlas.diagnostics()}
    out["arrays"] = {f"{k}": {n: v.copy() for n, v in c.arrays.items()} for k, c in atlas.counts.items()}
    out["gallery"] = {f"{k}": (g.score.copy(), g.image.copy(), g.patch.copy()) for k, g in atlas.galleries.items()}
    out["samples"] = {f"{k}": [x.copy() for x in c.sample] for k, c in atlas.counts.items()}
    return out


def _worker(rank: int, world: int, port: int, result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    from tcpa_core.distributed import cleanup_distributed, init_distributed

    assert init_distributed()
    try:
        data = Images(13)
        atlas = prompt_atlas(make_model(), data, batch_size=4, boxes=data.box_array, progress=False,
                             num_shuffles=2, jaccard_sample=5)
        if rank == 1:
            torch.save(_summary(atlas), result_file)
    finally:
        cleanup_distributed()


def _assert_close(a, b, path="stats"):
    """Equal structure and values; floats within 1e-9 (sums of the same numbers in another order)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    result = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(result)), nprocs=2, join=True)
    ddp = torch.load(result, weights_only=False)
    data = Images(13)
    single = _summary(prompt_atlas(make_model(), data, batch_size=4, boxes=data.box_array, progress=False,
                                   num_shuffles=2, jaccard_sample=5))
    assert ddp["usage"] == single["usage"]
    _assert_close(ddp["stats"], single["stats"])
    for key, arrays in single["arrays"].items():
        for name, value in arrays.items():
            np.testing.assert_allclose(ddp["arrays"][key][name], value, rtol=1e-12, err_msg=f"{key} {name}")
    for key, (score, image, patch) in single["gallery"].items():
        np.testing.assert_allclose(ddp["gallery"][key][0], score, rtol=0, atol=1e-6)
        # slots whose similarity is a near-tie (within float noise of another slot, e.g. the CLS token of block 0,
        # which is the same vector for every image) may hold either image; every other slot must match
        gaps = np.where(np.eye(score.shape[1], dtype=bool), np.inf, np.abs(score[:, :, None] - score[:, None, :]))
        distinct = gaps.min(-1) > 1e-5
        np.testing.assert_array_equal(ddp["gallery"][key][1][distinct], image[distinct])
        np.testing.assert_array_equal(ddp["gallery"][key][2][distinct], patch[distinct])
    for key, sample in single["samples"].items():
        for mine, theirs in zip(sample, ddp["samples"][key], strict=True):
            np.testing.assert_array_equal(mine, theirs)


def test_importance_rows_and_an_unselected_entry_is_exactly_zero(tmp_path):
    from tcpa_core import intervene
    from tcpa_viz.atlas.outputs import write_ablation

    model, data = make_model(collapsed=True), Images(6)
    result = prompt_importance(model, data, layers=[-1], batch_size=4, progress=False)
    entries = result.entries()
    assert len(entries) == (NC + NI) * 2 and len(result.rules()) == 3
    assert [r["mode"] for r in result.rules()] == ["random", "shared", "all"]
    unselected = [r for r in entries if r["images_selecting"] == 0 and r["mode"] == "mask"]
    assert unselected, "the collapsed model selects the same entries everywhere, so some are never selected"
    for r in unselected:
        assert r["delta_accuracy"] == 0.0 and r["delta_true_logit"] == 0.0 and r["changed_predictions"] == 0.0
    # a selected entry: the batched partial rerun equals a whole-model forward under intervene
    model, data = make_model(), Images(6)
    result = prompt_importance(model, data, layers=[0], pools=["image"], entries=[1, 2], batch_size=4,
                               progress=False, rules=["shared"])
    with torch.no_grad():
        base = model(data.images)
        labels = torch.tensor(data.targets)
        for r in result.entries():
            edit = {"mask_prompts" if r["mode"] == "mask" else "remove_prompts": {0: {"image": [r["entry"]]}}}
            with intervene(model, **edit):
                logits = model(data.images)
            assert r["accuracy"] == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))
            true = logits[torch.arange(6), labels] - base[torch.arange(6), labels]
            assert r["delta_true_logit"] == pytest.approx(float(true.mean()), abs=1e-5)
        with intervene(model, selection="shared"):
            shared = float((model(data.images).argmax(-1) == labels).float().mean())
    assert result.rules()[0]["accuracy"] == pytest.approx(shared)
    path = write_ablation(result, tmp_path, formats=["png"])[0]
    header = path.read_text().splitlines()[0].split(",")
    assert header[:7] == ["layer", "pool", "entry", "mode", "accuracy", "delta_accuracy", "delta_true_logit"]
    rows = path.read_text().splitlines()[1:]
    assert sum(row.startswith("all,") for row in rows) == 1 and len(rows) == 5
