"""Structured-output bitmask applied to float32 logits in place on CPU, by a small C kernel.

One pass over the mask words: a word with every bit set leaves its 32 logits alone, a zero word
sets all 32 to -inf, any other word clears its logits bit by bit. The logits of a masked row
are read only where its word is mixed (JSON structure masks are mostly zero words, string bodies
mostly full ones), so the cost is the mask's 25 KB per row plus the -inf writes, not a
201088-wide unpack of bits into a boolean tensor and a masked fill (about 10x more traffic).
`apply_bitmask_c` returns False where the C kernel is unavailable; the caller then uses torch.

Owns the Python side of csrc/bitmask.c; knows nothing of grammars or sampling.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from gptoss_serve.kernels import cpu_c


@functools.cache
def _load() -> ctypes.CDLL | None:
    """The library of csrc/bitmask.c, or None (see `cpu_c.load`)."""
    return cpu_c.load("bitmask.c")[0]


def apply_bitmask_c(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> bool:
    """In place on CPU float32 logits [B, V] (rows contiguous); False if it did nothing."""
    if (logits.device.type != "cpu" or logits.dtype != torch.float32
            or logits.stride(1) != 1 or bitmask.device.type != "cpu"):
        return False
    lib = _load()
    if lib is None:
        return False
    mask = bitmask.to(torch.int32).contiguous()
    idx = torch.tensor(rows, dtype=torch.int64)
    lib.apply_bitmask(logits.data_ptr(), logits.stride(0), idx.data_ptr(), len(rows),
                      mask.data_ptr(), mask.shape[1], logits.shape[1])
    return True
