"""Pretrain the embedded demo backbone ``tcpa_demo_vit`` on procedural glyphs, then write weights + card.

Reproducible on CPU (2 threads by default):

    python scripts/pretrain_backbone.py

What it does:

1. trains ``timm.create_model("tcpa_demo_vit")`` from scratch on :class:`tcpa_core.data.ProceduralGlyphs`
   (AdamW, linear warm-up then cosine decay, bf16 autocast on CPU unless ``--no-amp``), reading the samples
   in order so that their nuisance level follows an easy-to-hard curriculum, with a first phase on 2x
   downsampled images (a quarter of the tokens, several times cheaper). Objective, per image: cross-entropy
   of the CLS token over the glyph classes; for every patch token, cross-entropy against the glyph class
   where the patch holds ink (else an extra background class, through the same head) and the binary
   cross-entropy of a linear decoder (dropped afterwards) predicting the patch's pixel-level ink mask.
   The dense per-patch terms make a from-scratch ViT learn several times faster than the CLS loss alone;
2. measures accuracy on a held-out procedural split;
3. runs a linear probe on the digits-on-clutter demo task: standardised frozen CLS pre-logits features and
   a logistic regression whose ``C`` is chosen on the validation split; reports val and test accuracy
   (and, as a diagnostic, the same probe on the mean of the final patch tokens);
4. writes the backbone weights without any head as safetensors (atomically; fp32 when under 25 MB,
   else fp16) and a JSON card next to them.
"""

from __future__ import annotations

import os

# On a shared machine, OpenMP threads that spin while waiting for a busy core make torch several times
# slower; let them sleep instead (must be set before torch starts its thread pool).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tcpa_core.backbone import DEMO_ARCH, DEMO_BACKBONE, DEMO_MEAN, DEMO_STD, DEMO_WEIGHTS
from tcpa_core.checkpoint import atomic_write
from tcpa_core.data import DigitsOnClutter, ProceduralGlyphs
from tcpa_core.train import lr_at_step

MAX_WEIGHT_BYTES = 25 * 1024 * 1024


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8000, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed of the model init, data stream and probe splits")
    p.add_argument("--num-classes", type=int, default=64, help="procedural glyph classes")
    p.add_argument("--glyph-seed", type=int, default=0, help="seed of the glyph class figures")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-frac", type=float, default=0.05, help="fraction of steps of linear warm-up")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--curriculum-frac", type=float, default=0.5,
                   help="fraction of the first steps over which the nuisance level of the procedural "
                        "data ramps up linearly from 0 (centred, clean) to 1 (full clutter)")
    p.add_argument("--low-res-frac", type=float, default=0.8,
                   help="fraction of the first steps trained on 2x area-downsampled images (a quarter of the "
                        "tokens); position embeddings are resampled on the fly")
    p.add_argument("--token-loss-weight", type=float, default=0.5, help="per-patch class loss; 0 = off")
    p.add_argument("--ink-loss-weight", type=float, default=1.0, help="per-patch ink-mask loss; 0 = off")
    p.add_argument("--ink-threshold", type=float, default=0.1,
                   help="mean ink alpha that makes a patch 'glyph'")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--no-amp", action="store_true", help="train in fp32 instead of bf16 autocast")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=1, help="data-generation worker processes")
    p.add_argument("--eval-samples", type=int, default=2048, help="held-out procedural samples")
    p.add_argument("--probe-train-copies", type=int, default=3,
                   help="renderings per train digit for the probe")
    p.add_argument("--probe-every", type=int, default=0, help="also probe (val only) every N steps; 0 = off")
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--out", type=Path, default=DEMO_WEIGHTS, help="weights file; the card goes next to it")
    p.add_argument("--no-save", action="store_true", help="train and evaluate only (pilot runs)")
    return p.parse_args()


def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, position embedding and CLS token."""
    decay, no_decay = [], []
    for module in modules:
        for name, param in module.named_parameters():
            skip = param.ndim <= 1 or name in ("pos_embed", "cls_token")
            (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class InkDecoder(nn.Module):
    """Pretraining-only linear decoder: patch tokens ``[..., D]`` -> ink-mask logits ``[..., patch**2]``."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, patch * patch)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


def pretraining_loss(
    model: nn.Module, decoder: InkDecoder, images: torch.Tensor, labels: torch.Tensor, ink: torch.Tensor,
    args: argparse.Namespace,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Loss of one batch (images ``[B, 3, H, W]``, labels ``[B]``, ink alpha ``[B, H, W]``; see the module
    docstring), the CLS logits ``[B, num_classes + 1]`` and the value of each loss term."""
    patch = model.patch_embed.patch_size[0]
    tokens = model.forward_features(images)
    logits = model.forward_head(tokens).float()
    terms = {"cls": F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)}
    patch_tokens = tokens[:, model.num_prefix_tokens:]
    if args.token_loss_weight:
        inked = F.avg_pool2d(ink[:, None], patch).flatten(1) > args.ink_threshold  # [B, Np]
        targets = torch.where(inked, labels[:, None], torch.full_like(labels[:, None], args.num_classes))
        patch_logits = model.head(patch_tokens).float().flatten(0, 1)
        terms["token"] = args.token_loss_weight * F.cross_entropy(
            patch_logits, targets.flatten(), label_smoothing=args.label_smoothing)
    if args.ink_loss_weight:
        masks = F.unfold(ink[:, None], patch, stride=patch).transpose(1, 2)  # [B, Np, patch*patch]
        terms["ink"] = args.ink_loss_weight * F.binary_cross_entropy_with_logits(
            decoder(patch_tokens).float(), masks)
    return sum(terms.values()), logits, {k: float(v.detach()) for k, v in terms.items()}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, num_classes: int, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (fp32) on ``dataset`` over its first ``num_classes`` outputs."""
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        correct += int((model(images)[:, :num_classes].argmax(1) == labels).sum())
        total += len(labels)
    return correct / total


@torch.no_grad()
def frozen_features(
    model: nn.Module, dataset: Dataset, batch_size: int = 256,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Frozen features of ``dataset``: ``cls`` (pre-logits CLS, what the head uses) and ``patch_mean``
    (mean of the final patch tokens, a diagnostic), each ``[N, D]``, and the labels ``[N]``."""
    model.eval()
    cls, mean, labels = [], [], []
    for images, target in DataLoader(dataset, batch_size=batch_size):
        tokens = model.forward_features(images)
        cls.append(model.forward_head(tokens, pre_logits=True))
        mean.append(tokens[:, model.num_prefix_tokens:].mean(1))
        labels.append(target)
    return {"cls": torch.cat(cls).numpy(), "patch_mean": torch.cat(mean).numpy()}, torch.cat(labels).numpy()


def _fit_probe(xs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Logistic regression on standardised features; ``C`` picked on val; test scored if present."""
    scaler = StandardScaler().fit(xs["train"][0])
    best: dict[str, Any] = {}
    for c in (0.01, 0.1, 1.0):
        clf = LogisticRegression(C=c, max_iter=2000)
        clf.fit(scaler.transform(xs["train"][0]), xs["train"][1])
        val = clf.score(scaler.transform(xs["val"][0]), xs["val"][1])
        if not best or val > best["val_accuracy"]:
            best = {"C": c, "val_accuracy": float(val), "classifier": clf}
    result = {"C": best["C"], "val_accuracy": best["val_accuracy"]}
    if "test" in xs:
        test_x, test_y = xs["test"]
        result["test_accuracy"] = float(best["classifier"].score(scaler.transform(test_x), test_y))
    return result


def linear_probe(
    model: nn.Module, data: dict[str, DigitsOnClutter], with_test: bool,
) -> dict[str, dict[str, Any]]:
    """Linear probes on the digits task for the ``cls`` and ``patch_mean`` features; test only if asked."""
    feats = {name: frozen_features(model, ds) for name, ds in data.items() if name != "test" or with_test}
    return {kind: _fit_probe({name: (f[kind], y) for name, (f, y) in feats.items()})
            for kind in ("cls", "patch_mean")}


def command_line(argv: list[str]) -> str:
    """The command that reproduces this run, without ``--out`` (where the files went is not part of it)."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--out="):
            skip = False
            continue
        skip = arg == "--out"
        if not skip:
            kept.append(arg)
    return " ".join(["python", "scripts/pretrain_backbone.py", *kept])


def save_backbone(model: nn.Module, path: Path) -> str:
    """Save the backbone (no head) as safetensors, fp32 if it fits in 25 MB else fp16. Returns the dtype."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    nbytes = sum(v.numel() * 4 for v in state.values())
    dtype = torch.float32 if nbytes < MAX_WEIGHT_BYTES else torch.float16
    state = {k: v.to(dtype) for k, v in state.items()}
    meta = {"architecture": DEMO_BACKBONE, "dtype": str(dtype).replace("torch.", "")}
    atomic_write(path, lambda handle: handle.write(save(state, metadata=meta)))
    if path.stat().st_size >= MAX_WEIGHT_BYTES:
        raise RuntimeError(f"{path} is {path.stat().st_size} bytes, over the 25 MB budget")
    return meta["dtype"]


def train(
    model: nn.Module, decoder: InkDecoder, loader: DataLoader, args: argparse.Namespace,
    probe_data: dict[str, DigitsOnClutter],
) -> list[dict[str, Any]]:
    """The pretraining loop; returns the logged history."""
    optimizer = torch.optim.AdamW(param_groups([model, decoder], args.weight_decay), lr=args.lr)
    warmup = max(1, int(args.warmup_frac * args.steps))
    low_res_steps = int(args.low_res_frac * args.steps)
    params = list(model.parameters()) + list(decoder.parameters())
    history: list[dict[str, Any]] = []
    t0 = time.time()
    model.train()
    run_loss = run_acc = 0.0
    run_terms: dict[str, float] = {}
    for step, (images, labels, ink) in enumerate(loader):
        lr = lr_at_step(step, args.steps, warmup, args.lr, args.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if step < low_res_steps:
            images, ink = F.avg_pool2d(images, 2), F.avg_pool2d(ink[:, None], 2)[:, 0]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.no_amp):
            loss, logits, terms = pretraining_loss(model, decoder, images, labels, ink, args)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        run_loss += float(loss.detach())
        for key, value in terms.items():
            run_terms[key] = run_terms.get(key, 0.0) + value
        run_acc += float((logits[:, :args.num_classes].argmax(1) == labels).float().mean())
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            n = args.log_every if done % args.log_every == 0 else done % args.log_every
            elapsed = time.time() - t0
            entry = {"step": done, "loss": round(run_loss / n, 4), "train_accuracy": round(run_acc / n, 4),
                     "terms": {k: round(v / n, 4) for k, v in run_terms.items()}, "lr": lr,
                     "elapsed_s": round(elapsed, 1)}
            rate = done * args.batch_size / elapsed
            detail = " ".join(f"{k} {v:.3f}" for k, v in entry["terms"].items())
            print(f"step {done}/{args.steps} loss {entry['loss']:.3f} ({detail}) "
                  f"acc {entry['train_accuracy']:.3f} lr {lr:.2e} {rate:.0f} img/s {elapsed / 60:.1f} min",
                  flush=True)
            run_loss = run_acc = 0.0
            run_terms = {}
            if args.probe_every and done % args.probe_every == 0 and done != args.steps:
                probe = linear_probe(model, probe_data, with_test=False)
                entry["probe_val_accuracy"] = {k: round(v["val_accuracy"], 4) for k, v in probe.items()}
                print(f"  digits probe val {entry['probe_val_accuracy']}", flush=True)
                model.train()
            history.append(entry)
    return history


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()

    n_train = args.steps * args.batch_size
    train_set = ProceduralGlyphs(
        n_train, seed=args.seed, split="train", num_classes=args.num_classes, glyph_seed=args.glyph_seed,
        return_ink=True, curriculum=int(args.curriculum_frac * n_train),
    )
    heldout = ProceduralGlyphs(
        args.eval_samples, seed=args.seed, split="val", num_classes=args.num_classes,
        glyph_seed=args.glyph_seed,
    )
    probe_data = {
        "train": DigitsOnClutter("train", seed=args.seed, samples_per_digit=args.probe_train_copies),
        "val": DigitsOnClutter("val", seed=args.seed),
        "test": DigitsOnClutter("test", seed=args.seed),
    }
    # every sample is unique, so reading them in index order loses nothing and follows the curriculum;
    # labels cycle with the index, so batches are class-balanced
    loader = DataLoader(
        train_set, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
        worker_init_fn=_worker_init if args.workers else None,
        drop_last=True, persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers else None,
    )
    # one extra output: the "no glyph here" class of the patch tokens
    model = timm.create_model(DEMO_BACKBONE, num_classes=args.num_classes + 1, dynamic_img_size=True)
    decoder = InkDecoder(model.embed_dim, model.patch_embed.patch_size[0])
    low_res_steps = int(args.low_res_frac * args.steps)
    print(f"pretraining {DEMO_BACKBONE}: {args.steps} steps x {args.batch_size}, {args.num_classes} classes, "
          f"{low_res_steps} low-resolution steps", flush=True)

    t_train = time.time()
    history = train(model, decoder, loader, args, probe_data)
    pretrain_s = time.time() - t_train

    heldout_acc = accuracy(model, heldout, args.num_classes)
    print(f"held-out procedural accuracy {heldout_acc:.4f} ({pretrain_s / 60:.1f} min pretraining)",
          flush=True)
    probes = linear_probe(model, probe_data, with_test=True)
    for kind, res in probes.items():
        print(f"digits linear probe ({kind}): val {res['val_accuracy']:.4f} test {res['test_accuracy']:.4f} "
              f"(C={res['C']})", flush=True)
    probe = probes["cls"]
    if args.no_save:
        return

    dtype = save_backbone(model, args.out)
    warmup = max(1, int(args.warmup_frac * args.steps))
    card = {
        "name": DEMO_BACKBONE,
        "architecture": {
            **DEMO_ARCH, "input_size": [3, 64, 64], "mean": list(DEMO_MEAN), "std": list(DEMO_STD),
            "parameters": sum(p.numel() for k, p in model.named_parameters() if not k.startswith("head.")),
        },
        "weights": {"file": args.out.name, "dtype": dtype, "bytes": args.out.stat().st_size,
                    "excludes": "the pretraining classification head and ink decoder"},
        "pretraining_data": train_set.describe(),
        "heldout_data": heldout.describe(),
        "training": {
            "steps": args.steps, "batch_size": args.batch_size, "samples_seen": args.steps * args.batch_size,
            "optimizer": "AdamW", "lr": args.lr, "min_lr": args.min_lr, "weight_decay": args.weight_decay,
            "schedule": f"linear warm-up {warmup} steps, then cosine",
            "curriculum": f"nuisance level ramps 0 -> 1 over the first {args.curriculum_frac:.0%} of the "
                          "steps",
            "low_resolution": f"first {low_res_steps} steps on 2x downsampled images (32 px, 4x4 patches)",
            "objective": {
                "cls_classification": f"cross-entropy, label smoothing {args.label_smoothing}",
                "patch_classification": f"weight {args.token_loss_weight}: glyph class where the patch's "
                                        f"mean ink > {args.ink_threshold}, else a background class "
                                        "(same head)",
                "patch_ink": f"weight {args.ink_loss_weight}: BCE of a linear decoder's per-pixel ink mask",
            },
            "grad_clip": args.grad_clip, "precision": "fp32" if args.no_amp else "bf16 autocast",
            "seed": args.seed, "torch_threads": args.threads, "data_workers": args.workers,
        },
        "pretraining_wall_clock_s": round(pretrain_s, 1),
        "total_wall_clock_s": round(time.time() - t_start, 1),
        "heldout_pretraining_accuracy": round(heldout_acc, 4),
        "digits_linear_probe": {
            "task": f"tcpa_core.data.DigitsOnClutter(seed={args.seed}); train: {args.probe_train_copies} "
                    f"renderings per digit ({len(probe_data['train'])}), val {len(probe_data['val'])}, "
                    f"test {len(probe_data['test'])}; no source digit shared between splits",
            "features": "frozen CLS pre-logits (after the final norm), standardised",
            "classifier": "sklearn LogisticRegression, C chosen on val",
            "C": probe["C"], "val_accuracy": round(probe["val_accuracy"], 4),
            "test_accuracy": round(probe["test_accuracy"], 4),
            "diagnostic_patch_mean_features": {k: round(v, 4) if isinstance(v, float) else v
                                               for k, v in probes["patch_mean"].items()},
        },
        "history": history,
        "environment": {
            "torch": torch.__version__, "timm": timm.__version__, "scikit-learn": sklearn.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpu_cores": os.cpu_count(),
            "note": "wall-clock measured on a shared 2-core machine (other jobs were running)",
        },
        "command": command_line(sys.argv[1:]),
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
    }
    card_path = args.out.with_suffix(".json")
    text = json.dumps(card, indent=2) + "\n"
    atomic_write(card_path, lambda handle: handle.write(text.encode()))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, {dtype}) and {card_path}", flush=True)


if __name__ == "__main__":
    main()
