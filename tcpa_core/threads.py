"""The process's CPU-thread policy: one place that sets how many threads torch and the BLAS/OpenMP libraries use.

Library code never changes thread counts; entry points (the ``tcpa-viz`` command, scripts, benchmarks) call
:func:`configure_threads` once at start-up.
"""

from __future__ import annotations

import os

import torch

THREADS_ENV = "TCPA_NUM_THREADS"
"""Environment variable that overrides the default thread count (a positive integer)."""


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads and the BLAS/OpenMP pools (numpy, scikit-learn) to one count; returns it.

    ``num_threads`` defaults to ``$TCPA_NUM_THREADS`` when set, else every core this process may use. The
    BLAS/OpenMP limit is applied with threadpoolctl for the rest of the process.
    """
    from threadpoolctl import threadpool_limits

    from .errors import TCPAError

    if num_threads is None:
        text = os.environ.get(THREADS_ENV, "").strip()
        if text and not (text.isdigit() and int(text) > 0):
            raise TCPAError(f"${THREADS_ENV} must be a positive integer, got {text!r}; unset it or fix it.")
        num_threads = int(text) if text else available_cores()
    if num_threads < 1:
        raise TCPAError(f"the thread count must be at least 1, got {num_threads}.")
    torch.set_num_threads(num_threads)
    threadpool_limits(limits=num_threads)
    return num_threads
