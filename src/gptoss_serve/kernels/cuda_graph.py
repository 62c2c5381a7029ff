"""CUDA-graph capture of a decode step for a set of padded batch sizes.

Owns the graphs, their shared memory pool and the choice of padded size; the caller (the model
runner) owns the static input buffers and the step itself. Contract:

- `step(bs)` runs one decode step for `bs` rows reading ONLY from caller-owned static buffers
  (sliced to bs) and returns a tensor whose first dim is bs (e.g. sampled token ids). It must
  not sync with the host (no .item()/.tolist()/.cpu(), no shape that depends on data): with the
  Triton kernels of `choose_kernels` it does not; the references do, so graphs need Triton.
- Before `run(n)` the caller writes the n live rows into the static buffers and padding values
  into rows n..padded_size(n)-1: slot -1 (the Triton KV write skips it), block table row -1,
  seq_len 1, token id 0, position 0. Padded rows produce garbage that is sliced away.
- `run(n)` replays the graph of the smallest captured size >= n and returns output[:n] (a view
  into the graph's static output: copy it before the next step). Above the largest size, or
  with graphs disabled, it calls step(n) eagerly.

Knows nothing of the model, the sampler or the batch layout.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import torch

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)


class DecodeGraphs:
    """Captured decode steps, one per padded batch size, sharing one memory pool."""

    def __init__(self, step: Callable[[int], torch.Tensor],
                 batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, *, enabled: bool = True,
                 warmup_iters: int = 2) -> None:
        if not batch_sizes or min(batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
        self.step = step
        self.batch_sizes = sorted(set(batch_sizes))
        self.enabled = enabled
        self.warmup_iters = warmup_iters
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def padded_size(self, n: int) -> int | None:
        """Smallest captured size >= n, or None when n is above them all (eager)."""
        i = bisect.bisect_left(self.batch_sizes, n)
        return self.batch_sizes[i] if i < len(self.batch_sizes) else None

    def capture(self) -> None:
        """Warm up (compiles the kernels) and capture every size, largest first so the
        shared pool is sized by the biggest graph."""
        if not self.enabled:
            return
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for bs in reversed(self.batch_sizes):
                for _ in range(self.warmup_iters):
                    self.step(bs)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    out = self.step(bs)
                pool = graph.pool()
                self.graphs[bs] = (graph, out)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def run(self, n: int) -> torch.Tensor:
        """One step for n live rows (static buffers already filled, padding included)."""
        bs = self.padded_size(n) if self.enabled else None
        if bs is None or bs not in self.graphs:
            return self.step(n)
        graph, out = self.graphs[bs]
        graph.replay()
        return out[:n]
