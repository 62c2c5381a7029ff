"""Kernel choice: which attention and MoE implementations the model calls, picked once at start-up.

Owns the `KernelSet` contract. Every implementation has the signature of its plain-torch
reference (`kernels/attention.py: paged_attention_ref`, `kernels/moe.py: moe_ref`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gptoss_serve.kernels.attention import paged_attention_ref
from gptoss_serve.kernels.moe import moe_ref


@dataclass(frozen=True)
class KernelSet:
    attention: Callable  # same signature as paged_attention_ref
    moe: Callable  # same signature as moe_ref
    description: str  # logged at start-up: which path and why


def reference_kernels() -> KernelSet:
    return KernelSet(paged_attention_ref, moe_ref, "plain-torch reference attention and MoE")
