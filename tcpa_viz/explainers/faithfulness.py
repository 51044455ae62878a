"""Faithfulness of patch relevance maps: deletion and insertion curves, pointing game, energy in the box.

Deletion (Petsiuk et al. 2018, RISE): patches are replaced by the *fill*, most relevant first, and the
target class probability is recorded after every step; a faithful map makes it fall fast (low AUC).
Insertion starts from the fully filled image and puts the original patches back, most relevant first
(high AUC is faithful). The same curves with a seeded random patch order are the baseline every map must
beat. Curves have ``steps + 1`` points at the fractions ``round(s * Np / steps) / Np``, ``s = 0..steps``;
the AUC is the trapezoid area over that fraction axis (so it lies in ``[0, 1]``).

Fills (``fill=``):
``"blur"`` (default)
    the patch's pixels from a Gaussian blur of the same image (torchvision ``gaussian_blur``, sigma =
    ``blur_sigma`` or the patch size in pixels, kernel ``2 * ceil(3 sigma) + 1`` clipped to the image): the
    local colour stays, the shape information goes, so the model is not pushed off its input distribution
    as much as by a flat colour.
``"mean"``
    a constant: ``mean`` (a float, a ``[C]`` colour or a ``[C, H, W]`` image in normalised space, e.g. the
    dataset's mean image); the default 0 is the mean colour the images were normalised with.

Every curve point is a *deletion image*: the image with the first ``k`` patches of some order filled.
Insertion of the first ``k`` patches of an order is the deletion of the first ``Np - k`` patches of the
reversed order, and the random insertion curve uses the reverse of the random deletion order (a reversed
uniform permutation is again uniform, so it is still a random-order baseline). Hence the random insertion
curve is the random deletion curve read backwards, ``insertion_random(f) = deletion_random(1 - f)``, and
both cost one set of forward passes; the unperturbed and the fully filled image are scored once per image
and shared by the four curves (their first/last points). Per image that is ``3 (steps - 1) + 1`` forward
images when the step counts are symmetric (``k`` and ``Np - k`` both occur, e.g. whenever ``steps`` divides
``Np``; at most ``4 (steps - 1) + 1`` otherwise), ``+ 1`` when ``maps`` is not an :class:`Explanation`,
in forward passes of about ``batch_size`` images; each image's fill is computed once.

With ground-truth boxes (the digits demo keeps each digit's box), two localisation scores:
``pointing``: 1 when the centre of the patch with the largest relevance lies inside the box, else 0
(the pointing game of Zhang et al. 2016 at patch resolution). ``box_energy``: the share of the positive
relevance that falls inside the box, each patch weighted by the fraction of its area inside the box
(energy-based pointing game, Wang et al. 2020); NaN for a map without positive relevance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from tcpa_core.model import PromptedViT

from .base import Explanation, ExplanationError, Target, model_device, resolve_target

Fill = Literal["blur", "mean"]
CURVES = ("deletion", "insertion", "deletion_random", "insertion_random")


@dataclass
class FaithfulnessResult:
    """Curves ``[B, steps + 1]`` of the target probability, their AUC ``[B]`` and the box scores ``[B]``.

    ``curves`` and ``auc`` are keyed by :data:`CURVES` (the two random ones only when computed);
    ``pointing``/``box_energy`` are ``None`` without boxes.
    """

    fractions: torch.Tensor
    curves: dict[str, torch.Tensor]
    auc: dict[str, torch.Tensor]
    target: torch.Tensor
    fill: str
    pointing: torch.Tensor | None = None
    box_energy: torch.Tensor | None = None

    def summary(self) -> dict[str, float]:
        """Means over the images: ``<curve>_auc`` for every curve, ``pointing`` and ``box_energy`` when known."""
        out = {f"{name}_auc": float(auc.mean()) for name, auc in self.auc.items()}
        if self.pointing is not None and self.box_energy is not None:
            out["pointing"] = float(self.pointing.mean())
            out["box_energy"] = float(self.box_energy.nanmean())
        return out


def relevance_order(maps: torch.Tensor) -> torch.Tensor:
    """``[B, Np]`` patch indices, most relevant first (ties by patch index)."""
    return torch.sort(-maps.flatten(1).double(), dim=1, stable=True).indices


def random_order(batch: int, num_patches: int, seed: int, offset: int = 0) -> torch.Tensor:
    """``[B, Np]`` seeded random patch orders; image ``i`` uses seed ``(seed, offset + i)``."""
    orders = []
    for i in range(batch):
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + offset + i)
        orders.append(torch.randperm(num_patches, generator=generator))
    return torch.stack(orders)


def step_counts(num_patches: int, steps: int) -> torch.Tensor:
    """``[steps + 1]`` number of patches changed after each step, from 0 to ``num_patches``."""
    return torch.round(torch.arange(steps + 1, dtype=torch.float64) * num_patches / steps).long()


def fill_images(images: torch.Tensor, fill: Fill, patch: tuple[int, int], mean: float | torch.Tensor = 0.0,
                blur_sigma: float | None = None) -> torch.Tensor:
    """What removed patches are replaced with, ``[B, C, H, W]`` (see the module docstring)."""
    if fill == "blur":
        sigma = float(blur_sigma if blur_sigma is not None else max(patch))
        size = [min(2 * math.ceil(3 * sigma) + 1, d - (1 - d % 2)) for d in images.shape[-2:]]
        return gaussian_blur(images, kernel_size=size[::-1], sigma=sigma)
    if fill == "mean":
        value = torch.as_tensor(mean, dtype=images.dtype, device=images.device)
        if value.ndim == 1:
            value = value.view(-1, 1, 1)
        return value.expand_as(images).clone()
    raise ExplanationError(f"fill must be 'blur' or 'mean', got {fill!r}.")


def _patch_masks(orders: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``[B, S, Np]`` bool: patch ``p`` is among the first ``counts[s]`` of ``orders[b]``."""
    ranks = torch.empty_like(orders)
    ranks.scatter_(1, orders, torch.arange(orders.shape[1], device=orders.device).expand_as(orders))
    return ranks[:, None, :] < counts.to(orders.device)[None, :, None]


def _scores(model: nn.Module, images: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Target-class softmax probability ``[N]`` of ``images`` ``[N, C, H, W]`` with targets ``[N]``."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            # A PromptedViT computes only the class-token row of its last block (all the head reads).
            logits = (model.logits_from(model.embed(batch)) if isinstance(model, PromptedViT) else model(batch)).float()
            out.append(logits.softmax(-1).gather(1, target[start:start + batch_size, None])[:, 0])
    return torch.cat(out) if out else images.new_zeros(0)


def _deletion_scores(model: nn.Module, images: torch.Tensor, filled: torch.Tensor, target: torch.Tensor,
                     jobs: list[tuple[torch.Tensor, torch.Tensor]], patch: tuple[int, int], batch_size: int
                     ) -> list[torch.Tensor]:
    """Scores of deletion images for several ``(orders [B, Np], counts [m])`` jobs, ``[B, m]`` per job.

    The deletion image of order ``o`` and count ``k`` has the patches ``o[:k]`` taken from ``filled``, the
    others from ``images``. The images of all jobs are scored together, a few images at a time so that
    every forward pass holds about ``batch_size`` perturbed images.
    """
    b, h, w = len(images), images.shape[-2] // patch[0], images.shape[-1] // patch[1]
    sizes = [len(counts) for _, counts in jobs]
    total = sum(sizes)
    if total == 0:
        return [images.new_zeros(b, 0) for _ in jobs]
    masks = torch.cat([_patch_masks(order.to(images.device), counts) for order, counts in jobs], dim=1)
    chunk = max(1, batch_size // total)
    scores = []
    for lo in range(0, b, chunk):
        sl = slice(lo, min(lo + chunk, b))
        n = len(images[sl])
        pix = masks[sl].view(n, total, h, w).repeat_interleave(patch[0], 2).repeat_interleave(patch[1], 3)
        perturbed = torch.where(pix[:, :, None], filled[sl, None], images[sl, None]).flatten(0, 1)
        scores.append(_scores(model, perturbed, target[sl].repeat_interleave(total), batch_size).view(n, total))
    return list(torch.cat(scores).split(sizes, dim=1))


def box_scores(maps: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pointing game hits ``[B]`` (0./1.) and positive-relevance share inside the box ``[B]``.

    Args:
        maps: ``[B, h, w]`` patch relevance.
        boxes: ``[B, 4]`` ``(x0, y0, x1, y1)`` in pixels of the model input, ends exclusive.
        image_size: ``(H, W)`` of the model input.
    """
    b, h, w = maps.shape
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(b, 4)
    ph, pw = image_size[0] / h, image_size[1] / w
    x0 = torch.arange(w, dtype=torch.float64) * pw
    y0 = torch.arange(h, dtype=torch.float64) * ph
    fx = ((torch.minimum(x0 + pw, boxes[:, 2:3]) - torch.maximum(x0, boxes[:, 0:1])).clamp_min(0) / pw)
    fy = ((torch.minimum(y0 + ph, boxes[:, 3:4]) - torch.maximum(y0, boxes[:, 1:2])).clamp_min(0) / ph)
    inside = fy[:, :, None] * fx[:, None, :]
    flat = maps.detach().double().cpu().flatten(1)
    best = flat.argmax(dim=1)
    cx, cy = (best % w + 0.5) * pw, (best // w + 0.5) * ph
    hit = (cx >= boxes[:, 0]) & (cx < boxes[:, 2]) & (cy >= boxes[:, 1]) & (cy < boxes[:, 3])
    positive = flat.clamp_min(0)
    total = positive.sum(1)
    energy = (positive * inside.flatten(1)).sum(1) / total
    energy[total <= 0] = float("nan")
    return hit.double(), energy


def faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor | Explanation,
    target: Target = None,
    *,
    boxes: torch.Tensor | None = None,
    fill: Fill = "blur",
    mean: float | torch.Tensor = 0.0,
    blur_sigma: float | None = None,
    steps: int = 8,
    random_orders: int = 1,
    seed: int = 0,
    batch_size: int = 128,
) -> FaithfulnessResult:
    """Deletion/insertion curves with AUC beside a random-order baseline, and box scores when ``boxes`` are given.

    Args:
        model: any module mapping images ``[N, C, H, W]`` to logits ``[N, classes]`` (a ``PromptedViT``).
        images: ``[B, C, H, W]`` model inputs; ``H``/``W`` must be multiples of the map's ``h``/``w``.
        maps: ``[B, h, w]`` patch relevance, or an :class:`Explanation` of these images by this model (its
            ``.patches``, ``.target`` and ``.logits``, which saves one forward pass).
        target: classes to score (default: the explanation's target, else the predicted class).
        boxes: ``[B, 4]`` ground-truth boxes ``(x0, y0, x1, y1)`` in model-input pixels (ends exclusive).
        fill, mean, blur_sigma: what removed patches become (module docstring).
        steps: curve steps (each changes about ``Np / steps`` patches); ``steps + 1`` points.
        random_orders: random orders averaged for the baseline curves (insertion reads each one reversed, see
            the module docstring); 0 skips them (the random curves do not depend on the map, so one call per
            model and image set is enough).
        seed: seed of the random orders (image ``i`` of the call uses the same orders every time).
        batch_size: images per forward pass.
    """
    logits = None
    if isinstance(maps, Explanation):
        target = maps.target if target is None else target
        logits = maps.logits.float()
        maps = maps.patches
    maps = torch.as_tensor(maps).detach()
    if maps.ndim != 3 or images.ndim != 4 or maps.shape[0] != images.shape[0]:
        raise ExplanationError(f"expected images [B, C, H, W] and maps [B, h, w] for the same B, got "
                               f"{tuple(images.shape)} and {tuple(maps.shape)}.")
    b, h, w = maps.shape
    height, width = images.shape[-2:]
    if height % h or width % w:
        raise ExplanationError(f"image size {height}x{width} is not a multiple of the map grid {h}x{w}.")
    if steps < 1 or steps > h * w or random_orders < 0:
        raise ExplanationError(f"steps must be in [1, {h * w}] and random_orders >= 0, got {steps}, {random_orders}.")
    device = model_device(model)
    images = images.to(device)
    patch = (height // h, width // w)
    filled = fill_images(images, fill, patch, mean, blur_sigma)
    if logits is None:
        with torch.inference_mode():
            logits = torch.cat([model(images[i:i + batch_size]) for i in range(0, b, batch_size)]).float()
    logits = logits.to(device)
    t = resolve_target(target, logits)
    original = logits.softmax(-1).gather(1, t[:, None])[:, 0]
    counts = step_counts(h * w, steps)
    num_patches = h * w
    interior = counts[1:-1]
    relevance = relevance_order(maps)
    # deletion: counts c_s; insertion = deletion of the reversed order at Np - c_s (the same pixels)
    jobs = [(relevance, counts[-1:]), (relevance, interior), (relevance.flip(1), num_patches - interior)]
    # random: deletion at c_s and, read backwards, the insertion of the reversed order at Np - c_s
    shared = torch.unique(torch.cat([interior, num_patches - interior]))
    randoms = [random_order(b, num_patches, seed + r) for r in range(random_orders)]
    jobs += [(order, shared) for order in randoms]
    empty, *mid = _deletion_scores(model, images, filled, t, jobs, patch, batch_size)   # empty: all patches filled
    empty = empty[:, 0]
    ends = {"deletion": (original, empty), "insertion": (empty, original)}
    curves = {}
    for kind, scores in zip(("deletion", "insertion"), mid[:2], strict=True):
        start, stop = ends[kind]
        curves[kind] = torch.cat([start[:, None], scores, stop[:, None]], dim=1).double().cpu()
    if random_orders:
        where = {kind: torch.searchsorted(shared, c) for kind, c in
                 (("deletion", interior), ("insertion", num_patches - interior))}
        for kind in ("deletion", "insertion"):
            start, stop = ends[kind]
            scores = torch.stack([m[:, where[kind]] for m in mid[2:]]).mean(0)
            curves[kind + "_random"] = torch.cat([start[:, None], scores, stop[:, None]], dim=1).double().cpu()
    fractions = counts.double() / (h * w)
    auc = {name: torch.trapezoid(curves[name], fractions, dim=1) for name in CURVES if name in curves}
    result = FaithfulnessResult(fractions, curves, auc, t.cpu(), fill)
    if boxes is not None:
        result.pointing, result.box_energy = box_scores(maps, torch.as_tensor(boxes), (height, width))
    return result
