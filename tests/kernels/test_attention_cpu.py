"""CPU attention (batched decode, flash-attention prefill with the sink applied from its
logsumexp) against the plain-torch reference: random caches, odd sizes, mixed decode/prefill
batches, windows, sinks, blocks outside the window marked -1, a missing needed block, and a long
chunk over cached context (several of the flash kernel's blocks)."""

from __future__ import annotations

import random

import pytest
import torch

from gptoss_serve.kernels.attention import paged_attention_ref
from gptoss_serve.kernels.attention_cpu import paged_attention_cpu

HQ, HKV, D, BS, NBLOCKS = 6, 2, 12, 4, 64
SCALE = D**-0.5


def _batch(rng: random.Random, g: torch.Generator, window: int, decode_only: bool):
    """Random sequences: cached context + new tokens, tables with -1 for blocks out of window."""
    phys = list(range(NBLOCKS))
    rng.shuffle(phys)
    tables, slots, qsl, lens = [], [], [0], []
    for _ in range(rng.randint(1, 5)):
        new = 1 if decode_only else rng.choice([1, 1, 2, 3, 7, 11])
        seq_len = rng.randint(new, 30)
        nblk = -(-seq_len // BS)
        table, phys = phys[:nblk], phys[nblk:]
        first_key = seq_len - new - window + 1 if window else 0
        tables.append([b if (j + 1) * BS > first_key else -1 for j, b in enumerate(table)])
        slots += [table[p // BS] * BS + p % BS for p in range(seq_len - new, seq_len)]
        qsl.append(qsl[-1] + new)
        lens.append(seq_len)
    width = max(len(t) for t in tables) + rng.randint(0, 2)  # extra -1 padding columns
    table = torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32)
    t = qsl[-1]
    qkv = (torch.randn(t, HQ, D, generator=g), torch.randn(t, HKV, D, generator=g),
           torch.randn(t, HKV, D, generator=g))
    return qkv, torch.tensor(slots), table, torch.tensor(qsl, dtype=torch.int32), \
        torch.tensor(lens, dtype=torch.int32)


def _caches(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(NBLOCKS, BS, HKV, D, generator=g), torch.randn(NBLOCKS, BS, HKV, D,
                                                                      generator=g)


@pytest.mark.parametrize("window,decode_only,seed", [
    (0, True, 0), (5, True, 1), (8, True, 2), (0, False, 3), (5, False, 4), (3, False, 5),
    (0, False, 6), (16, False, 7)])
def test_cpu_attention_matches_reference(window, decode_only, seed):
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for _ in range(3):
        (q, k, v), slots, table, qsl, lens = _batch(rng, g, window, decode_only)
        sinks = torch.randn(HQ, generator=g) * 2
        kc, vc = _caches(g)
        kc2, vc2 = kc.clone(), vc.clone()
        want = paged_attention_ref(q, k, v, kc, vc, slots, table, qsl, lens, sinks, SCALE, window)
        got = paged_attention_cpu(q, k, v, kc2, vc2, slots, table, qsl, lens, sinks, SCALE,
                                  window)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
        assert torch.equal(kc, kc2) and torch.equal(vc, vc2)


def test_cpu_attention_bfloat16_close_to_reference():
    rng, g = random.Random(9), torch.Generator().manual_seed(9)
    (q, k, v), slots, table, qsl, lens = _batch(rng, g, 0, False)
    sinks = torch.randn(HQ, generator=g)
    kc, vc = (c.bfloat16() for c in _caches(g))
    kc2, vc2 = kc.clone(), vc.clone()
    args = (slots, table, qsl, lens, sinks, SCALE, 0)
    want = paged_attention_ref(q.bfloat16(), k.bfloat16(), v.bfloat16(), kc, vc, *args)
    got = paged_attention_cpu(q.bfloat16(), k.bfloat16(), v.bfloat16(), kc2, vc2, *args)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("new", [1, 2])
def test_missing_block_inside_window_is_an_error(new):
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(new, HQ, D), torch.randn(new, HKV, D), torch.randn(new, HKV, D)
    kc, vc = _caches(g)
    table = torch.tensor([[-1, 1]], dtype=torch.int32)  # keys 0..3 absent, yet needed
    slots = torch.tensor([4 + 4 - new + i for i in range(new)])
    with pytest.raises(ValueError, match="absent"):
        paged_attention_cpu(q, k, v, kc, vc, slots, table, torch.tensor([0, new],
                            dtype=torch.int32), torch.tensor([8], dtype=torch.int32),
                            torch.zeros(HQ), SCALE, 0)


@pytest.mark.parametrize("window,d", [(0, 64), (7, 12), (0, 20)])
def test_c_decode_matches_torch_decode(window, d, monkeypatch):
    """The C decode (one call for all sequences and heads) against the einsum path it replaces
    and the reference; both float32, so they differ only in summation order."""
    import gptoss_serve.kernels.attention_cpu as mod

    if mod._load() is None:
        pytest.skip("no C kernel here")
    g = torch.Generator().manual_seed(d + window)
    lens = [1, 9, 30, 17]
    width = max(-(-n // BS) for n in lens)
    table = torch.randperm(NBLOCKS, generator=g)[:len(lens) * width].view(len(lens), width)
    table = table.to(torch.int32)
    kc, vc = torch.randn(NBLOCKS, BS, HKV, d, generator=g), torch.randn(NBLOCKS, BS, HKV, d,
                                                                        generator=g)
    q, k, v = (torch.randn(len(lens), h, d, generator=g) for h in (HQ, HKV, HKV))
    slots = torch.tensor([int(table[i, (n - 1) // BS]) * BS + (n - 1) % BS
                          for i, n in enumerate(lens)])
    qsl = torch.arange(len(lens) + 1, dtype=torch.int32)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    sinks = torch.randn(HQ, generator=g)
    args = (q, k, v, kc.clone(), vc.clone(), slots, table, qsl, seq_lens, sinks, d ** -0.5,
            window)
    fast = paged_attention_cpu(*args)
    monkeypatch.setattr(mod, "_load", lambda: None)
    mod._PLANS.clear()
    torch_path = paged_attention_cpu(*args)
    want = paged_attention_ref(*args)
    torch.testing.assert_close(fast, torch_path, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(fast, want, atol=1e-5, rtol=1e-5)


def test_c_kv_write_equals_write_kv():
    """A decode step's K/V rows (strided views of the qkv row, one padding slot < 0) land in
    the same cache slots, with the same values, as through `write_kv`; a slot past the cache
    raises instead of writing."""
    from gptoss_serve.kernels import attention_cpu as ac
    from gptoss_serve.kernels.attention import write_kv

    if ac._load() is None:
        pytest.skip("no C kernel here: write_kv would be compared with itself")

    g = torch.Generator().manual_seed(8)
    qkv = torch.randn(3, (4 + 2 * 2) * 16, generator=g)
    k, v = qkv[:, 64:96].view(3, 2, 16), qkv[:, 96:].view(3, 2, 16)
    slots = torch.tensor([5, -1, 12])
    caches = [torch.zeros(4, 4, 2, 16) for _ in range(4)]
    ac._write_kv(k, v, caches[0], caches[1], slots)
    write_kv(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    with pytest.raises(IndexError):
        ac._write_kv(k, v, caches[0], caches[1], torch.tensor([5, 16, 1]))


@pytest.mark.parametrize("window", [0, 128])
def test_long_prefill_chunk_matches_reference(window):
    """300 new queries after 50 cached tokens, head size 64, the real model's GQA ratio."""
    g = torch.Generator().manual_seed(window)
    hq, hkv, d, bs, cached, new = 8, 2, 64, 16, 50, 300
    n = cached + new
    blocks = -(-n // bs)
    kc, vc = (torch.randn(blocks, bs, hkv, d, generator=g) for _ in range(2))
    q, k, v = (torch.randn(new, h, d, generator=g) for h in (hq, hkv, hkv))
    slots = torch.arange(cached, n)
    table = torch.arange(blocks, dtype=torch.int32)[None]
    qsl, lens = torch.tensor([0, new], dtype=torch.int32), torch.tensor([n], dtype=torch.int32)
    sinks = torch.randn(hq, generator=g) * 2
    args = (slots, table, qsl, lens, sinks, d ** -0.5, window)
    want = paged_attention_ref(q, k, v, kc.clone(), vc.clone(), *args)
    got = paged_attention_cpu(q, k, v, kc, vc, *args)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
