"""``prompt_atlas``: which prompts every token picks across a whole dataset, streamed.

One pass over the dataset with ``capture(model, names=["cls_assign", "image_assign", ...])``; every batch is
folded into fixed-size counts (:class:`tcpa_viz.atlas.counts.PoolCounts`) and, where the model exposes the
similarity hook points (``cls_sim`` / ``sim``), into bounded per-entry galleries. Under ``torchrun`` every
rank reads a strided shard and the counts are summed with ``torch.distributed`` (arrays with ``all_reduce``,
the distinct-set counters, samples and galleries with ``all_gather_object``), so every rank ends with the
counts of the whole dataset, identical to one process.

Chance levels: every NMI is repeated with the labels of image ``i`` replaced by those of image ``perm_s(i)``
for ``num_shuffles`` seeded permutations of the whole dataset (class labels for NMI(.; class), the object
box for NMI(top-1; object)); the atlas reports the mean (and std) of those next to the real value. The
permuted labels are ``num_shuffles`` small integer arrays of the dataset's length, the only per-image
memory besides the dataset's own labels and boxes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tcpa_core import capture
from tcpa_core.capture import check_layers
from tcpa_core.data.datasets import dataset_size
from tcpa_core.distributed import all_gather_objects, default_device, is_distributed, is_main_process
from tcpa_core.errors import PromptConfigError, UnsupportedModelError
from tcpa_core.model import PromptedViT

from .counts import (
    PoolCounts,
    SetTable,
    entropy_bits,
    expected_distinct_random,
    jaccard_from_counts,
    jaccard_of_sample,
    normalized_entropy,
    random_jaccard,
    unpack_set,
)
from .data import dataset_labels, input_boxes, object_patches, shard_loader
from .gallery import GalleryBuffer
from .nmi import nmi_from_table, nmi_with_chance

POOLS = ("cls", "image")
EXACT_JACCARD_MAX_SETS = 4096
"""Above this many distinct CLS sets the across-image Jaccard is estimated from the bounded sample."""
SIM_NAMES = {"cls": "cls_sim", "image": "sim"}
ASSIGN_NAMES = {"cls": "cls_assign", "image": "image_assign"}


@dataclass(frozen=True)
class CollapseCriteria:
    """When a pool of a block is reported as *selection collapse*.

    - ``set``: the most frequent selected set is chosen by at least ``dominant_set_share`` of the tokens, or
      there are at most ``few_sets`` distinct sets: the selection hardly depends on the input;
    - ``top1``: one entry is the first choice of at least ``dominant_top1_share`` of the tokens (uniform
      choice would give ``1 / N``).
    """

    dominant_set_share: float = 0.9
    few_sets: int = 2
    dominant_top1_share: float = 0.5


@dataclass
class PromptAtlas:
    """What :func:`prompt_atlas` measured. ``counts[(layer, pool)]`` holds the raw counts; the methods derive
    the tables (``usage_rows``), per-block diagnostics (``block_stats``) and the JSON (``to_json``)."""

    layers: list[int]
    num_images: int
    num_classes: int
    grid: tuple[int, int]
    input_size: tuple[int, int]
    counts: dict[tuple[int, str], PoolCounts]
    galleries: dict[tuple[int, str], GalleryBuffer] = field(default_factory=dict)
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    criteria: CollapseCriteria = field(default_factory=CollapseCriteria)
    meta: dict[str, Any] = field(default_factory=dict)
    _stats: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def has_boxes(self) -> bool:
        return any(c.has_regions for c in self.counts.values())

    # ------------------------------------------------------------------------------------ tables
    def usage_rows(self) -> list[dict[str, Any]]:
        """One row per (layer, pool, entry) - the ``usage.csv`` of ``tcpa-viz atlas``. Columns:
        ``layer, pool, entry, selected, top1, rank_weighted`` (counts over (image, token) pairs),
        ``tokens`` (pairs of that pool), ``selected_share, top1_share`` (count / tokens),
        ``object_selected, object_top1, background_selected, background_top1`` (image pool with boxes, else
        empty) and ``object_rate, background_rate`` (selected / object or background tokens)."""
        rows = []
        for (layer, pool), c in sorted(self.counts.items()):
            sel, top, rw = c.selected, c.top1, c.rank_weighted
            reg, reg_top, reg_tok = (c.arrays[k] for k in ("region_counts", "region_top1", "region_tokens"))
            for e in range(c.size):
                row: dict[str, Any] = {"layer": layer, "pool": pool, "entry": e, "selected": int(sel[e]),
                                       "top1": int(top[e]), "rank_weighted": float(rw[e]), "tokens": c.num_tokens,
                                       "selected_share": sel[e] / max(c.num_tokens, 1),
                                       "top1_share": top[e] / max(c.num_tokens, 1)}
                if c.has_regions:
                    row.update(object_selected=int(reg[0, e]), object_top1=int(reg_top[0, e]),
                               background_selected=int(reg[1, e]), background_top1=int(reg_top[1, e]),
                               object_rate=reg[0, e] / max(reg_tok[0], 1), background_rate=reg[1, e] /
                               max(reg_tok[1], 1))
                else:
                    row.update(object_selected=None, object_top1=None, background_selected=None,
                               background_top1=None, object_rate=None, background_rate=None)
                rows.append(row)
        return rows

    def block_stats(self, layer: int, pool: str) -> dict[str, Any]:
        """Diagnostics of one pool of one block (JSON-ready):

        ``tokens, images, entries_used, entropy`` (normalised entropy of the any-rank usage; 1 = uniform),
        ``top1_entropy``, ``set_entropy_bits``, ``distinct_sets`` (over all (image, token) pairs) and its
        uniform-random reference ``distinct_sets_random``, ``dominant_set`` / ``dominant_set_share``,
        ``dominant_top1`` / ``dominant_top1_share``, ``jaccard`` (CLS: mean Jaccard similarity of the selected
        sets over all pairs of images, ``jaccard_exact`` says whether it is exact or the bounded-sample
        estimate; image: mean over images of the mean pairwise Jaccard similarity of its patches' sets),
        ``jaccard_random`` (two random sets), ``nmi_class_set`` / ``nmi_class_top1`` /
        ``nmi_object_top1``: ``{"nmi", "chance", "chance_std"}`` (object only with boxes, image pool),
        and ``collapse``: ``{"collapsed", "kinds", "message"}``.
        """
        if (layer, pool) in self._stats:
            return self._stats[(layer, pool)]
        c = self.counts[(layer, pool)]
        tokens = max(c.num_tokens, 1)
        sel, top = c.selected, c.top1
        sets = c.sets.counts()
        dominant_key, dominant_count = max(sets.items(), key=lambda kv: (kv[1], kv[0])) if sets else (b"", 0)
        stats: dict[str, Any] = {
            "layer": layer, "pool": pool, "tokens": c.num_tokens, "images": c.num_images,
            "pool_size": c.size, "topk": c.topk, "entries_used": int((sel > 0).sum()),
            "entropy": normalized_entropy(sel), "top1_entropy": normalized_entropy(top),
            "set_entropy_bits": entropy_bits(sets.values()), "distinct_sets": len(sets),
            "distinct_sets_random": expected_distinct_random(c.size, c.topk, c.num_tokens),
            "dominant_set": unpack_set(dominant_key, c.size) if sets else [],
            "dominant_set_share": dominant_count / tokens,
            "dominant_top1": int(np.argmax(top)), "dominant_top1_share": float(top.max() / tokens),
            "jaccard_random": random_jaccard(c.size, c.topk),
        }
        if c.tokens == 1:
            exact = len(sets) <= EXACT_JACCARD_MAX_SETS
            stats["jaccard"] = jaccard_from_counts(dict(sets), c.size) if exact else \
                jaccard_of_sample(c.sample[2], c.size)
            stats["jaccard_exact"] = exact
            stats["jaccard_kind"] = "across images (CLS sets)"
        else:
            stats["jaccard"] = float(c.arrays["totals"][2] / max(c.num_images, 1))
            stats["jaccard_exact"] = True
            stats["jaccard_kind"] = "within image (patch sets)"
        table = c.sets.table
        stats["nmi_class_set"] = nmi_with_chance(table[0], list(table[1:]))
        stats["nmi_class_top1"] = nmi_with_chance(c.arrays["class_top1"], list(c.arrays["shuffled_class_top1"]))
        if c.has_regions:
            stats["nmi_object_top1"] = nmi_with_chance(c.arrays["region_top1"],
                                                       list(c.arrays["shuffled_region_top1"]))
        else:
            stats["nmi_object_top1"] = None
        stats["collapse"] = self._collapse(stats)
        self._stats[(layer, pool)] = stats
        return stats

    def _collapse(self, s: dict[str, Any]) -> dict[str, Any]:
        crit = self.criteria
        name = "CLS pool" if s["pool"] == "cls" else "image pool"
        tokens = "images" if s["pool"] == "cls" else "patch tokens"
        kinds, parts = [], []
        if s["dominant_set_share"] >= crit.dominant_set_share or s["distinct_sets"] <= crit.few_sets:
            kinds.append("set")
            parts.append(f"{s['distinct_sets']} distinct set(s) over {s['tokens']} {tokens}, the most frequent "
                         f"set {s['dominant_set']} chosen by {100 * s['dominant_set_share']:.1f}%")
        if s["dominant_top1_share"] >= crit.dominant_top1_share:
            kinds.append("top1")
            parts.append(f"entry {s['dominant_top1']} is the first choice of "
                         f"{100 * s['dominant_top1_share']:.1f}% of the {tokens}")
        message = (f"block {s['layer']} {name}: selection collapse: " + "; ".join(parts)) if kinds else \
            f"block {s['layer']} {name}: no collapse ({s['distinct_sets']} distinct sets, top entry " \
            f"{s['dominant_top1']} first for {100 * s['dominant_top1_share']:.1f}%)"
        return {"collapsed": bool(kinds), "kinds": kinds, "message": message}

    def diagnostics(self) -> list[dict[str, Any]]:
        """:meth:`block_stats` of every (layer, pool), in order."""
        return [self.block_stats(layer, pool) for (layer, pool) in sorted(self.counts)]

    def collapse_messages(self) -> list[str]:
        """One line per (layer, pool) naming selection collapse where it happens."""
        return [d["collapse"]["message"] for d in self.diagnostics()]

    def gallery_records(self, layer: int, pool: str) -> list[list[dict[str, Any]]]:
        """Per entry, the gallery (see :meth:`GalleryBuffer.records`); empty lists without similarity hooks."""
        buffer = self.galleries.get((layer, pool))
        size = self.counts[(layer, pool)].size
        return [buffer.records(e, self.grid) if buffer is not None else [] for e in range(size)]

    def to_json(self) -> dict[str, Any]:
        """The ``atlas.json`` document (see :func:`tcpa_viz.atlas.outputs.write_atlas`)."""
        blocks = []
        for (layer, pool), c in sorted(self.counts.items()):
            a = c.arrays
            entry: dict[str, Any] = {
                **self.block_stats(layer, pool),
                "selected": c.selected, "top1": c.top1, "rank_weighted": c.rank_weighted,
                "rank_counts": a["rank_counts"], "class_selected": a["class_counts"], "class_top1": a["class_top1"],
                "class_tokens": a["class_tokens"], "coselect": a["coselect"],
                "position_selected": a["position_counts"].T if pool == "image" else None,
                "position_top1": a["position_top1"].T if pool == "image" else None,
                "object": ({"selected": a["region_counts"][0], "top1": a["region_top1"][0],
                            "tokens": a["region_tokens"][0]} if c.has_regions else None),
                "background": ({"selected": a["region_counts"][1], "top1": a["region_top1"][1],
                                "tokens": a["region_tokens"][1]} if c.has_regions else None),
                "gallery": self.gallery_records(layer, pool),
            }
            blocks.append(entry)
        return {"meta": {**self.meta, "layers": self.layers, "num_images": self.num_images,
                         "num_classes": self.num_classes, "class_names": self.class_names,
                         "grid": list(self.grid), "input_size": list(self.input_size),
                         "has_boxes": self.has_boxes, "collapse_criteria": asdict(self.criteria),
                         "notes": self.notes},
                "collapse": self.collapse_messages(), "blocks": blocks}


def _resolve_layers(model: PromptedViT, layers: Any) -> list[int]:
    """Sorted block indices of ``layers`` (an int or an iterable of them, negative allowed; None: all)."""
    return list(range(model.depth)) if layers is None else check_layers(layers, model.depth, "layers",
                                                                        PromptConfigError)


def _check_model(model: PromptedViT) -> None:
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "uses_token_matching", False):
        method = getattr(config, "method", type(model).__name__)
        raise UnsupportedModelError(
            f"the prompt atlas needs a TCPA model with token matching (method 'tcpa'), got {method!r}: only it "
            "selects prompts per token."
        )


def _similarity_names() -> set[str]:
    from tcpa_core.hooks import BlockHooks

    return set(BlockHooks.NAMES)


def _reduce(counts: dict[tuple[int, str], PoolCounts], galleries: dict[tuple[int, str], GalleryBuffer]) -> None:
    """Sum every rank's counts (all ranks end with the totals)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    keys = sorted(counts)
    arrays = [counts[k].arrays[name] for k in keys for name in sorted(counts[k].arrays)]
    flat = torch.from_numpy(np.concatenate([x.ravel() for x in arrays]))
    device = default_device() if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat_np, offset = flat.cpu().numpy(), 0
    for x in arrays:
        x[...] = flat_np[offset:offset + x.size].reshape(x.shape)
        offset += x.size
    mine = {k: (counts[k].sets, counts[k].sample) for k in keys}
    gathered = all_gather_objects((mine, galleries))
    for k in keys:
        c = counts[k]
        c.sets = SetTable(c.sets.width, c.sets.labelings, c.sets.num_classes)
        c.sample = (c.sample[0][:0], c.sample[1][:0], c.sample[2][:0])
    for theirs, _ in gathered:
        for k in keys:
            sets, sample = theirs[k]
            counts[k].sets.merge(sets)
            counts[k].merge_sample(sample)
    for k, buffer in list(galleries.items()):
        merged = GalleryBuffer(buffer.entries, buffer.size)
        for _, their_galleries in gathered:
            merged.merge(their_galleries[k])
        galleries[k] = merged


def _class_names(dataset: Dataset, num_classes: int) -> list[str] | None:
    """The dataset's ``classes`` (torchvision convention: one name per class) as strings, or None when it has
    none or something else under that name (a count, a list of another length)."""
    names = getattr(dataset, "classes", None)
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return [str(c) for c in names]
    return None


@torch.no_grad()
def prompt_atlas(
    model: PromptedViT,
    dataset: Dataset,
    batch_size: int = 64,
    *,
    layers: Any = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    boxes: np.ndarray | None | str = "auto",
    gallery_size: int = 8,
    num_shuffles: int = 5,
    jaccard_sample: int = 2048,
    seed: int = 0,
    criteria: CollapseCriteria | None = None,
) -> PromptAtlas:
    """Stream ``dataset`` through a TCPA ``model`` and count which prompt entries every token selects.

    Args:
        model: a ``PromptedViT`` with method ``tcpa`` (token matching).
        dataset: ``(image [C, H, W] transformed for the model, label)`` samples.
        batch_size: images per forward.
        layers: blocks to analyse (negative allowed; default all).
        device: where the forward runs (default: where the model is; the model is moved there).
        boxes: ``"auto"`` (the dataset's ``boxes`` when it has them), ``None`` (no object statistics) or
            ``[N, 4]`` boxes in model-input pixels.
        gallery_size: top-N tokens kept per entry (needs the ``sim``/``cls_sim`` hook points; 0 = none).
        num_shuffles: label permutations for the chance levels of the NMIs.
        jaccard_sample: CLS sets kept for the across-image Jaccard estimate (used only beyond
            ``EXACT_JACCARD_MAX_SETS`` distinct sets).
        seed: seed of the label permutations and of the Jaccard sample.
        criteria: thresholds of the collapse verdicts.
    Returns:
        :class:`PromptAtlas` (identical on every rank under ``torchrun``).
    """
    from tqdm.auto import tqdm

    _check_model(model)
    chosen = _resolve_layers(model, layers)
    if gallery_size < 0 or num_shuffles < 0 or jaccard_sample < 2:
        raise PromptConfigError("gallery_size and num_shuffles must be >= 0 and jaccard_sample >= 2.")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev)
    n_images = dataset_size(dataset)
    labels = dataset_labels(dataset)
    num_classes = int(model.num_classes)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        from tcpa_core.errors import DatasetError

        raise DatasetError(f"labels span {labels.min()}..{labels.max()} but the model has {num_classes} classes.")
    notes: list[str] = []
    box_array = input_boxes(dataset, model) if isinstance(boxes, str) else boxes
    if box_array is None:
        notes.append("object statistics skipped: the dataset has no object boxes (only the digits demo task "
                     "and datasets with a `boxes` attribute have them).")
    elif len(box_array) != n_images:
        from tcpa_core.errors import DatasetError

        raise DatasetError(f"boxes has {len(box_array)} rows for {n_images} images.")
    rng = np.random.default_rng([seed, 91827])
    perms = np.stack([rng.permutation(n_images) for _ in range(num_shuffles)]) if num_shuffles else \
        np.zeros((0, n_images), dtype=np.int64)
    shuffled_labels = labels[perms].astype(np.int32)
    cfg = model.config
    _, height, width = model.data_config["input_size"]
    gh, gw = (int(g) for g in model.backbone.patch_embed.grid_size)
    grid = (gh, gw)
    num_patches = grid[0] * grid[1]
    has_cls = model.num_prefix > 0
    pools = [p for p in POOLS if p == "image" or has_cls]
    sizes = {"cls": (cfg.cls_pool_size, cfg.cls_topk, 1), "image": (cfg.image_pool_size, cfg.image_topk, num_patches)}
    counts = {(layer, p): PoolCounts(layer, p, *sizes[p], num_classes, num_shuffles, jaccard_sample, seed)
              for layer in chosen for p in pools}
    available = _similarity_names()
    with_sims = gallery_size > 0 and all(SIM_NAMES[p] in available for p in pools)
    if gallery_size > 0 and not with_sims:
        notes.append("galleries skipped: this tcpa_core exposes no similarity hook points (cls_sim / sim).")
    galleries = {(layer, p): GalleryBuffer(sizes[p][0], gallery_size) for layer in chosen for p in pools} \
        if with_sims else {}
    names = [ASSIGN_NAMES[p] for p in pools] + ([SIM_NAMES[p] for p in pools] if with_sims else [])
    loader = shard_loader(dataset, batch_size, num_workers, dev)
    was_training = model.training
    model.eval()
    try:
        for images, batch_labels, index in tqdm(loader, desc="atlas", leave=False, dynamic_ncols=True,
                                                disable=not (progress and is_main_process())):
            idx = index.numpy()
            with capture(model, layers=chosen, names=names) as cache:
                model(images.to(dev, non_blocking=True))
            lab = batch_labels.numpy()
            shuf = shuffled_labels[:, idx]
            regions = shuffled_regions = None
            if box_array is not None:
                regions = object_patches(box_array[idx], grid, (height, width))
                shuffled_regions = np.stack([object_patches(box_array[perms[s, idx]], grid, (height, width))
                                             for s in range(num_shuffles)]) if num_shuffles else \
                    np.zeros((0, *regions.shape), bool)
            for layer in chosen:
                for p in pools:
                    assign = cache[ASSIGN_NAMES[p], layer]
                    if p == "cls":
                        assign = assign.unsqueeze(1)
                    counts[(layer, p)].update(assign, lab, shuf, regions if p == "image" else None,
                                              shuffled_regions if p == "image" else None, idx)
                    if with_sims:
                        galleries[(layer, p)].update(cache[SIM_NAMES[p], layer], idx, assign, p == "cls")
    finally:
        model.train(was_training)
    _reduce(counts, galleries)
    class_names = _class_names(dataset, num_classes)
    meta = {"depth": model.depth, "method": cfg.method, "rank_weight": "(K - r) / K for rank r = 0..K-1",
            "object_token": "patch whose centre lies inside the ground-truth box",
            "chance": f"mean over {num_shuffles} permutations of the image labels (class) or boxes (object)",
            "num_shuffles": num_shuffles, "gallery_size": gallery_size if with_sims else 0,
            "pool_sizes": {p: sizes[p][0] for p in pools}, "topk": {p: sizes[p][1] for p in pools},
            "log_pool_sets": {p: math.log2(math.comb(sizes[p][0], sizes[p][1])) for p in pools}}
    return PromptAtlas(layers=chosen, num_images=n_images, num_classes=num_classes, grid=grid,
                       input_size=(int(height), int(width)), counts=counts, galleries=galleries,
                       class_names=class_names, notes=notes,
                       criteria=criteria or CollapseCriteria(), meta=meta)


__all__ = ["CollapseCriteria", "PromptAtlas", "nmi_from_table", "prompt_atlas"]
