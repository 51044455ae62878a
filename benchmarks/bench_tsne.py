"""Benchmark: t-SNE of 10,000 x 768 synthetic clustered features through ``tcpa_viz.run_tsne``.

Bar: the embedding (PCA to 50 dims + Barnes-Hut t-SNE, 1000 iterations) finishes in <= 60 s on 2 CPU cores.
Threads follow ``tcpa_core.threads.configure_threads`` (``$TCPA_NUM_THREADS``, default every core) unless
``--n-jobs`` is given.
The metrics (silhouette, k-NN, trustworthiness on subsamples) are timed separately.

    python benchmarks/bench_tsne.py [--n 10000] [--dim 768] [--classes 10] [--n-jobs N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

BAR_SECONDS = 60.0


def clustered_features(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``[n, dim]`` float32 features of ``classes`` isotropic Gaussian clusters, and their labels ``[n]``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32) * 0.35
    labels = rng.integers(0, classes, size=n)
    features = centres[labels] + rng.normal(size=(n, dim)).astype(np.float32)
    return features, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--n-jobs", type=int, default=None, help="threads (default: the process's thread policy)")
    parser.add_argument("--json", default=None, help="also write the timings and metrics to this JSON file")
    args = parser.parse_args(argv)

    from tcpa_viz import run_tsne

    features, labels = clustered_features(args.n, args.dim, args.classes)
    start, cpu_start = time.perf_counter(), time.process_time()
    from tcpa_core.threads import configure_threads

    configure_threads()
    n_jobs = args.n_jobs
    load = os.getloadavg()[0]
    result = run_tsne(features, labels, max_iter=args.max_iter, n_jobs=n_jobs, random_state=0)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    embed_s = result.timings["pca"] + result.timings["tsne"]
    m = result.metrics
    print(f"t-SNE of {args.n} x {args.dim} ({args.classes} classes), {os.cpu_count()} CPUs visible, "
          f"load average {load:.1f} at start, n_jobs={args.n_jobs} -> {result.params['n_jobs']} threads, "
          f"max_iter={args.max_iter}")
    print(f"  PCA to {result.params['pca_dims']}: {result.timings['pca']:.2f} s")
    print(f"  t-SNE (perplexity {result.params['perplexity']:g}): {result.timings['tsne']:.2f} s")
    print(f"  embedding wall time: {embed_s:.2f} s (bar <= {BAR_SECONDS:.0f} s)")
    print(f"  metrics: {result.timings['metrics']:.2f} s  (silhouette features {m['silhouette_features']:.3f} "
          f"/ embedding {m['silhouette_embedding']:.3f} on {m['silhouette_n']}, "
          f"{m['knn_k']}-NN {m['knn_accuracy_features']:.3f} on {m['knn_n']}, "
          f"trustworthiness {m['trustworthiness']:.3f} on {m['trustworthiness_n']})")
    print(f"  end to end: {total:.2f} s wall, {cpu:.2f} s CPU (all threads)")
    ok = embed_s <= BAR_SECONDS
    print("PASS" if ok else "FAIL")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"embedding_s": embed_s, "end_to_end_s": total, "cpu_s": cpu, "bar_s": BAR_SECONDS, "pass": ok,
                       **result.summary()}, fh, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
