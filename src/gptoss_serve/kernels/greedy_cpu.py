"""Exact greedy tokens on CPU without computing every logit exactly: an int8 screen of the
bf16 unembedding, then the exact bf16 sums only for the rows the screen cannot rule out.

A greedy (temperature 0) step needs only the argmax of the logits. The unembedding is the
biggest read of a batch-1 decode step (201088 bf16 rows); `ArgmaxIndex` keeps beside it an int8
copy (one float32 scale per row: half the bytes) and, per row, bounds of the quantization error
(largest element, Euclidean norm) and of float32 rounding. For an activation row x:
  1. every row's screen score A_v = s_v * sum q_v,h x_h (int8 widened to float32),
  2. a bound B_v >= |A_v - E_v| where E_v is the logit `logits_cpu` computes (the same float32
     sum, `bf16_dot` of `csrc/kernel.h`): rounding of both sums + min(max|e_v| |x|_1,
     |e_v|_2 |x|_2) with e_v = w_v - s_v q_v (Hoelder and Cauchy-Schwarz),
  3. L = max_v (A_v - B_v); a row with A_v + B_v < L has E_v < L <= E_j for some j, so it is
     neither the argmax nor tied with it,
  4. E_v computed exactly for the others; the largest wins, the first index on ties.
The result is `argmax(logits_cpu(x, weight))` bit for bit whatever the weights (the bound is
rigorous; only the number of rows computed in step 4 depends on the weights). Non-finite
activations make the call return None (the caller computes the logits); an unembedding with
non-finite values gets no index.

Owns the index and its C kernel; knows nothing of sampling parameters or the model.
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass

import torch

from gptoss_serve.kernels import cpu_c
from gptoss_serve.kernels.logits_cpu import row_parts

BUILD_ROWS = 8192  # unembedding rows quantized at a time when building the index
MAX_ROWS = 4  # activation rows per call (= csrc/greedy.c's: its block holds 2 x 4 accumulators)
_U = 2.0 ** -24  # float32 unit roundoff
_MAX_PARTS = 64  # vocabulary slices at most (= csrc/greedy.c's MAX_PARTS: per-slice arrays)
ROW_STATS = ("round_c", "e_max", "e_l2", "sq_l2")  # csrc/greedy.c's RowStats, in its order


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the C library of csrc/greedy.c, how) or (None, why not); see `cpu_c.load`."""
    return cpu_c.load("greedy.c")


def _round_up(t: torch.Tensor) -> torch.Tensor:
    """float64 t (>= 0, computed with relative error far below 1e-9) -> a float32 upper bound:
    widened by 1e-9, then rounded up (also below float32's normal range)."""
    t = t * (1 + 1e-9)
    f = t.float()
    return torch.where(f.double() < t, f.nextafter(torch.tensor(math.inf)), f)


def _bounds(raw: torch.Tensor, scale: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row bounds (C's RowStats, rounded up) and their column maxima from float32 row
    statistics [V, 4]: max|w|, max|e|/s, |e|_2/s and |q|_2, where float32 left the units off
    by at most 128u per value and the sums of squares off by a factor of at most (1 + h u)."""
    gamma = h * _U / (1 - h * _U)  # recursive float32 summation of h products
    sums, per_value = 1 + 2 * h * _U, 128 * _U * 1.01
    columns = {"round_c": raw[:, 0] * gamma, "e_max": scale * (raw[:, 1] + per_value),
               "e_l2": scale * (raw[:, 2] * sums + per_value * h ** 0.5),
               "sq_l2": scale * raw[:, 3] * sums}
    stats = _round_up(torch.stack([columns[name] for name in ROW_STATS], dim=1))
    return stats, stats.amax(dim=0)


@dataclass
class ArgmaxIndex:
    """The screen of one bf16 unembedding [V, H] (the weight kept by reference, not copied)."""

    weight: torch.Tensor  # bf16 [V, H]
    w_top: float  # max |weight|
    q: torch.Tensor  # int8 [V, H]
    scale: torch.Tensor  # float32 [V]: weight ~ scale * q
    stats: torch.Tensor  # float32 [V, 4] (C's RowStats): the columns of ROW_STATS
    worst: torch.Tensor  # float32 [4]: the columns' maxima

    @classmethod
    def build(cls, weight: torch.Tensor) -> ArgmaxIndex | None:
        """The index of a contiguous bf16 [V, H] CPU weight (H % 32 == 0); None where the C
        kernel cannot run or the weight holds non-finite values. Per row (all rounded up):
        round_c = gamma_H * max|w| (float32 rounding of the exact sum per unit of |x|_1),
        e_max and e_l2 of e = w - scale * q, sq_l2 = scale * |q|_2. The error is measured in
        units of the row's scale (w / s - q: no underflow whatever the row's magnitude)."""
        v, h = weight.shape
        if (_load()[0] is None or weight.dtype != torch.bfloat16 or weight.device.type != "cpu"
                or not weight.is_contiguous() or h % 32 or v == 0):
            return None
        q = torch.empty(v, h, dtype=torch.int8)
        scales, stats = torch.empty(v, dtype=torch.float32), torch.empty(v, 4, dtype=torch.float64)
        w_top = 0.0
        for s in range(0, v, BUILD_ROWS):
            w = weight[s:s + BUILD_ROWS].float()
            top = w.abs().amax(dim=1)
            if not bool(torch.isfinite(top).all()):
                return None
            w_top = max(w_top, float(top.max()))
            scale = scales[s:s + BUILD_ROWS] = top / 127  # > 0 for any bf16 top > 0 (>= 2^-133)
            units = torch.where(scale[:, None] > 0, w / scale[:, None], 0)  # w/s, off by <= 128u
            qs = units.round().clamp_(-127, 127)
            q[s:s + BUILD_ROWS] = qs
            err = units.sub_(qs).abs_()  # |e| / s, off by <= 128u (no underflow: O(1) values)
            stats[s:s + BUILD_ROWS] = torch.stack(
                [top, err.amax(dim=1), err.square().sum(dim=1).sqrt(),
                 qs.square_().sum(dim=1).sqrt()], dim=1).double()
        return cls(weight, w_top, q, scales, *_bounds(stats, scales.double(), h))

    def nbytes(self) -> int:
        """Memory held beside the weight."""
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale, self.stats))

    def argmax(self, x: torch.Tensor) -> torch.Tensor | None:
        """`argmax(logits_cpu(x, weight), -1)` for float32 rows x [S, H], S <= MAX_ROWS; None
        for non-finite rows or more rows than that (compute the logits then)."""
        found = self.screen(x)
        return None if found is None else found[0]

    def screen(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(argmax [S], rows whose exact logit was computed [S]); see `argmax`."""
        x = x.float().contiguous()
        (m, h), (v, _) = x.shape, self.weight.shape
        if m == 0 or m > MAX_ROWS or h != self.weight.shape[1]:
            return None
        out, computed = torch.empty(m, dtype=torch.int64), torch.empty(m, dtype=torch.int64)
        scores = torch.empty(m, v, dtype=torch.float64)
        parts = min(row_parts(v), _MAX_PARTS)
        ok = _load()[0].screened_argmax(
            x.data_ptr(), m, h, self.weight.data_ptr(), self.w_top, self.q.data_ptr(),
            self.scale.data_ptr(), self.stats.data_ptr(), self.worst.data_ptr(), v,
            scores.data_ptr(), parts, out.data_ptr(), computed.data_ptr())
        return (out, computed) if ok else None
