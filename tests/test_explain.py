"""Attributions and faithfulness against independent computations (tiny ViTs, toy models)."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from conftest import images_for, tiny_vit
from torch import nn

from tcpa_core import PromptConfig, build_model, capture, intervene
from tcpa_viz import attention_rollout, rollout_map
from tcpa_viz.explainers import (
    EXPLAINERS,
    ExplanationError,
    box_scores,
    explain,
    faithfulness,
    fill_images,
    gradient_weighted_attention,
    list_explainers,
)
from tcpa_viz.explainers.gradients import attention_gradients

TCPA = PromptConfig(method="tcpa", cls_pool_size=6, image_pool_size=6, cls_topk=2, image_topk=2)
CONFIGS = {
    "none": PromptConfig(method="none"),
    "tcpa": TCPA,
    "r-tcpa": PromptConfig(method="r-tcpa", cls_pool_size=4, image_pool_size=4),
    "vpt-deep": PromptConfig(method="vpt-deep", num_prompts=3),
    "vpt-shallow": PromptConfig(method="vpt-shallow", num_prompts=3),
}


def wrapped(variant: str, config: PromptConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed + 100)
    return build_model(tiny_vit(variant, seed=seed), config, num_classes=5).eval()


def chefer_reference(vit: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The published rule on a bare timm ViT: R = I; per block R <- R + mean_h((dy_t/dA * A)^+) R, with A the
    softmax output of timm's attention (hooked at ``attn_drop``; ``fused_attn`` off). Returns the CLS row of R
    over the patch tokens [B, Np] and over the prefix tokens [B, num_prefix]."""
    vit = copy.deepcopy(vit).eval()
    kept: list[torch.Tensor] = []
    handles = []
    for block in vit.blocks:
        block.attn.fused_attn = False

        def keep(_module, _args, out):
            out.retain_grad()
            kept.append(out)
        handles.append(block.attn.attn_drop.register_forward_hook(keep))
    x = images.clone().requires_grad_(True)
    logits = vit(x)
    t = logits.argmax(-1) if target is None else target
    logits.gather(1, t[:, None]).sum().backward()
    for h in handles:
        h.remove()
    b, tokens = images.shape[0], kept[0].shape[-1]
    r = torch.eye(tokens, dtype=torch.float64).expand(b, -1, -1)
    for a in kept:
        cam = (a.grad * a).detach().clamp(min=0).mean(dim=1).double()
        r = r + cam @ r
    n = vit.num_prefix_tokens
    return r[:, 0, n:], r[:, 0, :n]


@pytest.mark.parametrize("variant", ["plain", "registers"])
def test_relevance_of_the_unprompted_model_is_the_published_rule(variant):
    vit = tiny_vit(variant)
    images = images_for(vit, batch=3)
    expected_patches, expected_prefix = chefer_reference(vit, images)
    model = build_model(copy.deepcopy(vit), PromptConfig(method="none"), num_classes=5)
    e = explain(model, images, method="relevance")
    assert e.prompts is None and e.prompts_per_layer is None
    assert e.prefix.shape == (3, vit.num_prefix_tokens)
    torch.testing.assert_close(e.patches.flatten(1).double(), expected_patches, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(e.prefix.double(), expected_prefix, rtol=1e-4, atol=1e-6)
    assert float(expected_patches.abs().max()) > 1e-3  # the rule does put relevance on the patches
    target = torch.tensor([1, 4, 0])
    expected_patches, _ = chefer_reference(vit, images, target)
    e = explain(model, images, target=target, method="relevance")
    torch.testing.assert_close(e.patches.flatten(1).double(), expected_patches, rtol=1e-4, atol=1e-6)
    assert e.target.tolist() == target.tolist()


def forward_recurrence(layers, layout, readout):
    """The propagation written forwards with full matrices: R_tok [B, T, T] from I, R_prompt [B, T, L, P] from 0."""
    n, np_, p = layout.num_prefix, layout.num_patches, layout.num_prompt_keys
    b, t = layers[0].shape[0], n + np_
    r_tok = torch.eye(t, dtype=torch.float64).expand(b, -1, -1)
    r_prompt = torch.zeros(b, t, len(layers), p, dtype=torch.float64)
    for l, abar in enumerate(layers):
        abar = abar.double()
        tt = torch.cat([abar[..., :n], abar[..., n + p:]], dim=-1)
        r_tok = r_tok + tt @ r_tok
        r_prompt = r_prompt + torch.einsum("bij,bjlp->bilp", tt, r_prompt)
        r_prompt[:, :, l] += abar[..., n:n + p]
    return torch.einsum("t,bts->bs", readout, r_tok), torch.einsum("t,btlp->blp", readout, r_prompt)


@pytest.mark.parametrize("variant", ["plain", "registers"])
def test_tcpa_unselected_prompt_columns_pass_no_relevance(variant):
    """Invariant: A' = A * M, so (dy/dA' * A')[i, p] = 0 where query i did not select prompt column p; the
    relevance a prompt column receives in block l therefore sums only over the queries that selected it."""
    model = wrapped(variant, TCPA)
    images = images_for(model.backbone, batch=2)
    attn, grads, _, _ = attention_gradients(model, images, None)
    with torch.no_grad(), capture(model, names=["mask"]) as cache:
        model(images)
    layout = cache.layout
    prompt_cols = slice(layout.num_prefix, layout.num_prefix + layout.num_prompt_keys)
    layers = []
    for l, (a, g) in enumerate(zip(attn, grads, strict=True)):
        abar = gradient_weighted_attention(a, g)
        mask = cache["mask", l]
        assert bool((~mask[..., prompt_cols]).any()) and bool(mask[..., prompt_cols].any())
        assert torch.count_nonzero(abar[~mask]) == 0
        assert torch.count_nonzero(abar[..., prompt_cols][mask[..., prompt_cols]]) > 0
        layers.append(abar)
    e = explain(model, images, method="relevance")
    readout = torch.zeros(layout.num_queries, dtype=torch.float64)
    readout[0] = 1.0
    tokens, prompts = forward_recurrence(layers, layout, readout)
    torch.testing.assert_close(e.patches.flatten(1).double(), tokens[:, layout.num_prefix:], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(e.prompts_per_layer.double(), prompts, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(e.prompts, e.prompts_per_layer.sum(1))
    assert e.prompts.shape == (2, layout.num_prompt_keys) and float(e.prompts.sum()) > 0
    # the last block's prompt relevance is the CLS row alone: only the CLS pool entries the CLS token selected
    cls_cols = cache["mask", -1][:, 0, prompt_cols]
    assert torch.count_nonzero(e.prompts_per_layer[:, -1][~cls_cols]) == 0


def test_a_prompt_masked_for_every_query_receives_no_relevance():
    model = wrapped("plain", TCPA)
    images = images_for(model.backbone, batch=2)
    layout = explain(model, images[:1], method="attention").layout
    before = explain(model, images, method="relevance")
    image_cols = layout.num_cls_prompt_keys + torch.arange(layout.num_image_prompt_keys)
    cls_cols = torch.arange(layout.num_cls_prompt_keys)
    entry = int(before.prompts_per_layer[:, 0, image_cols].sum(0).argmax())
    cls_entry = int(before.prompts_per_layer[:, 1, cls_cols].sum(0).argmax())
    assert float(before.prompts_per_layer[:, 0, image_cols[entry]].min()) > 0
    with intervene(model, mask_prompts={0: {"image": [entry]}, 1: {"cls": [cls_entry]}}):
        after = explain(model, images, method="relevance")
    assert torch.count_nonzero(after.prompts_per_layer[:, 0, image_cols[entry]]) == 0
    assert torch.count_nonzero(after.prompts_per_layer[:, 1, cls_entry]) == 0
    assert float(after.prompts_per_layer.sum()) > 0


@pytest.mark.parametrize("method", list(EXPLAINERS))
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_method_is_batched(method, config):
    model = wrapped("registers", CONFIGS[config])
    images = images_for(model.backbone, batch=3)
    options = {"n_steps": 4} if method == "integrated-gradients" else {}
    whole = explain(model, images, method=method, **options)
    assert whole.patches.shape == (3, 4, 4) and torch.isfinite(whole.patches).all()
    assert whole.method == method and whole.target.tolist() == whole.logits.argmax(-1).tolist()
    p = whole.layout.num_prompt_keys
    if method == "integrated-gradients" or config == "none":
        assert whole.prompts is None
    else:
        assert whole.prompts.shape == (3, p) and whole.prompts_per_layer.shape == (3, 2, p)
    for i in range(3):
        single = explain(model, images[i:i + 1], method=method, **options)
        torch.testing.assert_close(single.patches[0], whole.patches[i], rtol=1e-4, atol=1e-6)
        if whole.prompts is not None:
            torch.testing.assert_close(single.prompts[0], whole.prompts[i], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("config", ["none", "tcpa"])
def test_rollout_patches_equal_attention_rollout_without_renormalising(config):
    model = wrapped("registers", CONFIGS[config])
    images = images_for(model.backbone, batch=2)
    with torch.no_grad(), capture(model, names=["attn"]) as cache:
        model(images)
    expected = rollout_map(attention_rollout({l: cache["attn", l] for l in cache.layers()}, cache.layout,
                                            missing_mass="drop"), cache.layout, "cls")
    e = explain(model, images, method="rollout")
    torch.testing.assert_close(e.patches.double(), expected, rtol=1e-5, atol=1e-8)
    if config == "tcpa":
        # what is not on the patches or the prefix went to prompt columns or was removed by the mask
        assert float(e.prompts.sum()) > 0
        assert bool((e.totals()["patches"] + e.totals()["prefix"] + e.totals()["prompts"] < 1.0 + 1e-6).all())


def test_attention_method_splits_the_last_cls_row():
    model = wrapped("plain", TCPA)
    images = images_for(model.backbone, batch=2)
    with torch.no_grad(), capture(model, names=["attn"]) as cache:
        model(images)
    row = cache["attn", -1].mean(1)[:, 0]
    e = explain(model, images, method="attention")
    n, p = cache.layout.num_prefix, cache.layout.num_prompt_keys
    torch.testing.assert_close(e.patches.flatten(1), row[:, n + p:])
    torch.testing.assert_close(e.prompts, row[:, n:n + p])
    torch.testing.assert_close(sum(e.totals().values()), row.sum(-1))


@pytest.mark.parametrize("config", ["none", "tcpa"])
def test_integrated_gradients_completeness(config):
    """sum of attributions = f(x) - f(baseline) up to Captum's convergence delta; the per-patch sums lose nothing."""
    model = wrapped("plain", CONFIGS[config])
    images = images_for(model.backbone, batch=3)
    e = explain(model, images, method="integrated-gradients", n_steps=64)
    with torch.no_grad():
        gap = (model(images) - model(torch.zeros_like(images))).gather(1, e.target[:, None])[:, 0].double()
    delta = e.extras["convergence_delta"].double()
    total = e.patches.flatten(1).sum(1).double()
    assert bool(((total - gap).abs() <= delta.abs() + 1e-4).all())
    torch.testing.assert_close(total - gap, delta, rtol=0, atol=1e-4)
    if config == "none":  # a smooth model: the quadrature is tight
        assert float(delta.abs().max()) < 1e-2 * float(gap.abs().max())


class PatchLinear(nn.Module):
    """Toy classifier: class-0 logit = sum_p w_p * mean(pixels of patch p); class-1 logit = 0."""

    def __init__(self, weights: torch.Tensor, patch: int) -> None:
        super().__init__()
        self.register_buffer("weights", weights.flatten())
        self.patch = patch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        means = nn.functional.avg_pool2d(images.mean(1, keepdim=True), self.patch).flatten(1)
        score = means @ self.weights - 4.0
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_deletion_auc_orders_oracle_random_anti_oracle():
    torch.manual_seed(0)
    weights = torch.linspace(0.1, 3.0, 16)[torch.randperm(16)].view(4, 4)
    model = PatchLinear(weights, 8)
    images = torch.ones(5, 3, 32, 32) + 0.1 * torch.rand(5, 3, 32, 32)
    oracle = weights.expand(5, -1, -1)
    kwargs = dict(target=0, fill="mean", steps=16, random_orders=8)
    good = faithfulness(model, images, oracle, **kwargs)
    bad = faithfulness(model, images, -oracle, **kwargs)
    assert bool((good.auc["deletion"] < good.auc["deletion_random"]).all())
    assert bool((good.auc["deletion_random"] < bad.auc["deletion"]).all())
    assert bool((good.auc["insertion"] > good.auc["insertion_random"]).all())
    assert bool((good.auc["insertion_random"] > bad.auc["insertion"]).all())
    # the random baseline does not depend on the map
    torch.testing.assert_close(good.auc["deletion_random"], bad.auc["deletion_random"])
    # curve endpoints: the image itself and the fully filled image
    probs = model(images).softmax(-1)[:, 0].double()
    torch.testing.assert_close(good.curves["deletion"][:, 0], probs)
    torch.testing.assert_close(good.curves["insertion"][:, -1], probs)
    torch.testing.assert_close(good.curves["deletion"][:, -1], good.curves["insertion"][:, 0])
    assert good.fractions.tolist() == [s / 16 for s in range(17)]


def test_deletion_removes_exactly_the_most_relevant_patches():
    weights = torch.arange(1.0, 17.0).view(4, 4)
    model = PatchLinear(weights, 8)
    images = torch.ones(1, 3, 32, 32)
    result = faithfulness(model, images, weights[None], target=0, fill="mean", steps=4, random_orders=0)
    assert set(result.curves) == {"deletion", "insertion"}
    for s, k in enumerate([0, 4, 8, 12, 16]):
        kept = weights.flatten().sort(descending=True).values[k:].sum()  # every patch mean is 1
        expected = torch.softmax(torch.tensor([float(kept) - 4.0, 0.0]), 0)[0]
        assert abs(float(result.curves["deletion"][0, s]) - float(expected)) < 1e-5


def test_insertion_restores_exactly_the_most_relevant_patches():
    weights = torch.arange(1.0, 17.0).view(4, 4)
    model = PatchLinear(weights, 8)
    images = torch.ones(1, 3, 32, 32)
    result = faithfulness(model, images, weights[None], target=0, fill="mean", steps=4, random_orders=0)
    for s, k in enumerate([0, 4, 8, 12, 16]):
        kept = weights.flatten().sort(descending=True).values[:k].sum()  # mean fill 0: only restored patches count
        expected = torch.softmax(torch.tensor([float(kept) - 4.0, 0.0]), 0)[0]
        assert abs(float(result.curves["insertion"][0, s]) - float(expected)) < 1e-5


@pytest.mark.parametrize(("grid", "steps"), [(4, 4), (4, 5), (4, 16), (3, 2), (3, 6)])
def test_random_insertion_is_the_random_deletion_read_backwards(grid, steps):
    """The random insertion order is the reverse of the random deletion order (written out here image by image);
    with symmetric step counts (not so for 9 patches in 2 or 6 steps) insertion_random(f) = deletion_random(1 - f)."""
    torch.manual_seed(1)
    n = grid * grid
    model = PatchLinear(torch.randn(grid, grid), 8)
    images = torch.rand(3, 3, 8 * grid, 8 * grid)
    result = faithfulness(model, images, torch.rand(3, grid, grid), target=0, fill="blur", steps=steps,
                          random_orders=2)
    fills = fill_images(images, "blur", (8, 8))
    counts = torch.round(torch.arange(steps + 1) * n / steps).long().tolist()
    for name, reverse in (("deletion_random", False), ("insertion_random", True)):
        expected = torch.zeros(3, steps + 1, dtype=torch.float64)
        for r in range(2):
            for i in range(3):
                order = torch.randperm(n, generator=torch.Generator().manual_seed(r * 1_000_003 + i))
                order = order.flip(0) if reverse else order
                for s, k in enumerate(counts):
                    changed = torch.zeros(n, dtype=torch.bool)
                    changed[order[:k]] = True
                    filled = ~changed if reverse else changed   # insertion: the first k patches are the image's
                    pix = filled.view(grid, grid).repeat_interleave(8, 0).repeat_interleave(8, 1)
                    x = torch.where(pix, fills[i], images[i])
                    expected[i, s] += float(model(x[None]).softmax(-1)[0, 0]) / 2
        torch.testing.assert_close(result.curves[name], expected, rtol=1e-5, atol=1e-6)
    symmetric = all(n - k in counts for k in counts)
    assert symmetric == ((grid, steps) not in ((3, 2), (3, 6)))
    if symmetric:
        torch.testing.assert_close(result.curves["insertion_random"], result.curves["deletion_random"].flip(1))


def test_blur_fill_keeps_a_flat_image():
    model = PatchLinear(torch.ones(4, 4), 8)
    images = torch.full((2, 3, 32, 32), 0.7)
    result = faithfulness(model, images, torch.rand(2, 4, 4), target=0, fill="blur", steps=4)
    torch.testing.assert_close(result.curves["deletion"], result.curves["deletion"][:, :1].expand(-1, 5),
                               rtol=1e-5, atol=1e-6)


def test_pointing_game_is_one_where_the_box_holds_the_evidence():
    """Images equal the integrated-gradients baseline (0) outside the box, so every attribution outside it is 0
    and, for a class whose logit grew, the positive relevance lies inside the box."""
    model = wrapped("plain", CONFIGS["none"])
    g = torch.Generator().manual_seed(3)
    images = torch.zeros(3, 3, 32, 32)
    boxes = torch.tensor([[8.0, 8.0, 24.0, 16.0], [0.0, 16.0, 16.0, 32.0], [16.0, 0.0, 32.0, 32.0]])
    for img, (x0, y0, x1, y1) in zip(images, boxes.long().tolist(), strict=True):
        img[:, y0:y1, x0:x1] = 2.0 * torch.randn(3, y1 - y0, x1 - x0, generator=g)
    with torch.no_grad():
        target = (model(images) - model(torch.zeros_like(images))).argmax(-1)
    e = explain(model, images, target=target, method="integrated-gradients", n_steps=32)
    result = faithfulness(model, images, e, boxes=boxes, steps=4)
    assert result.pointing.tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(result.box_energy, torch.ones(3, dtype=torch.float64))


def test_box_scores_on_constructed_maps():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1], maps[0, 3, 3] = 3.0, 1.0    # peak inside the box, a quarter of the mass outside
    maps[1, 0, 3], maps[1, 1, 1] = 2.0, 1.0    # peak outside
    maps[1, 2, 2] = -5.0                       # negative relevance is not energy
    boxes = torch.tensor([[8.0, 8.0, 20.0, 16.0]] * 2)   # patch (1,1) fully, patch (1,2) half inside
    hit, energy = box_scores(maps, boxes, (32, 32))
    assert hit.tolist() == [1.0, 0.0]
    torch.testing.assert_close(energy, torch.tensor([0.75, 1.0 / 3.0], dtype=torch.float64))
    _, empty = box_scores(torch.zeros(1, 4, 4), boxes[:1], (32, 32))
    assert torch.isnan(empty).all()


def test_bad_requests_raise_named_errors():
    model = wrapped("plain", TCPA)
    images = images_for(model.backbone, batch=2)
    with pytest.raises(ExplanationError, match="unknown explanation method"):
        explain(model, images, method="gradcam")
    with pytest.raises(ExplanationError, match="target classes"):
        explain(model, images, target=7, method="relevance")
    with pytest.raises(ExplanationError, match="2 images"):
        explain(model, images, target=[0, 1, 2], method="attention")
    with pytest.raises(ExplanationError, match="fill"):
        faithfulness(model, images, torch.rand(2, 4, 4), fill="noise")
    with pytest.raises(ExplanationError, match="maps"):
        faithfulness(model, images, torch.rand(3, 4, 4))
    assert list_explainers() == ["relevance", "rollout", "attention", "integrated-gradients"]


@pytest.mark.slow
def test_cli_explain_writes_the_table_and_figures(tmp_path, capsys):
    from test_figures import assert_outputs, make_demo_dir

    from tcpa_viz.cli import main

    demo = make_demo_dir(tmp_path)
    out = tmp_path / "explain"
    code = main(["explain", "--model", str(demo / "tcpa" / "best"), "--baseline", str(demo / "vpt-deep" / "best"),
                 "--out", str(out), "--num-images", "3", "--steps", "4", "--ig-steps", "4",
                 "--methods", "relevance,rollout,attention,integrated-gradients"])
    assert code == 0, capsys.readouterr().err
    with (out / "faithfulness.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], r["method"]) for r in rows] == [
        (m, k) for m in ("VPT-deep", "TCPA") for k in ("relevance", "rollout", "attention", "integrated-gradients")]
    for r in rows:
        for column in ("deletion_auc", "insertion_auc", "pointing", "box_energy", "deletion_auc_random",
                       "insertion_auc_random"):
            assert 0.0 <= float(r[column]) <= 1.0, (column, r)
    assert_outputs([out / f"{stem}.{ext}" for stem in ("explain_overlays", "explain_curves")
                    for ext in ("png", "html")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--model", str(demo / "tcpa" / "best"), "--out", str(out), "--methods", "gradcam"])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: tcpa-viz explain: argument --methods")
    assert main(["explain", "--model", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: No checkpoint at")
