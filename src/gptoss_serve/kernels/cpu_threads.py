"""How many threads a CPU step uses: torch's own operators, and the memory-bound C kernels.

Seen on a 2-core VM (docs/benchmarks.md, "CPU single stream, round 3"): at decode batch
sizes torch's operators are too small to gain from a second thread, yet every operator that
opens an OpenMP parallel region (MKL's small GEMMs, `bmm`, large copies) pays for waking the
other worker. That cost explodes when the step runs outside the process's main thread, as the
server's engine loop does: libgomp then manages more threads than there are cores (the main
thread's team plus the engine thread's), so idle workers sleep after a short spin and every
region pays a futex wake-up, and a batch-1 step there was far slower than in the main
thread. So a small step (`step_threads`) runs torch's operators on one thread, while the C
kernels of `logits_cpu` (the unembedding and expert products: memory bound, a few calls per
step) keep every thread torch was configured with (`kernel_threads`).

Owns that rule and nothing else; knows nothing of models or batches beyond a token count.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SMALL_STEP_TOKENS = 8  # steps with at most this many new tokens run torch's operators on 1 thread
_state = threading.local()


def kernel_threads() -> int:
    """Threads for the C kernels: torch's configured count, also inside `step_threads`."""
    return getattr(_state, "configured", 0) or torch.get_num_threads()


@contextmanager
def step_threads(tokens: int) -> Iterator[None]:
    """Within: torch's operators on one thread when the step has at most `SMALL_STEP_TOKENS`
    new tokens; restored on exit. Nested or larger steps change nothing."""
    configured = torch.get_num_threads()
    if tokens > SMALL_STEP_TOKENS or configured == 1 or getattr(_state, "configured", 0):
        yield
        return
    _state.configured = configured
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(configured)
        _state.configured = 0
