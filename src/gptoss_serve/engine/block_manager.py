"""KV block pools, per-sequence block tables and the prefix cache (pure Python, no torch).

gpt-oss has two kinds of layers, so there are two pools with their own integer block ids:
`full` (full-attention layers keep every block of a sequence) and `sliding` (sliding-window layers
only need the blocks holding the last `window` positions; older ones go back to the pool at once).
Full blocks are named by a chained hash of their tokens; freed blocks that carry a hash stay
reusable until the allocator evicts them, least recently freed first. A prefix hit of k blocks
needs the first k blocks in the full pool and, in the sliding pool, the blocks that the token at
position k*block_size still sees.

A sequence's tables change in three ways only (the runner's persistent batch relies on it):
`allocate` appends to both; `commit` turns sliding entries below `num_trimmed_blocks` to -1;
`free` and prefix hits give the sequence new list objects.

Owns block ids, reference counts and hashes; knows nothing of torch, scheduling policy or models.

Follows vLLM's v1 prefix caching (`vllm/v1/core/kv_cache_utils.py: hash_block_tokens`,
`vllm/v1/core/block_pool.py`).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable

from gptoss_serve.engine.sequence import Sequence


class InvariantError(AssertionError):
    """The block manager's bookkeeping is inconsistent (a bug, never a user error)."""


class BlockPool:
    """One pool: reference counts, an LRU free list and the hash index of cached blocks."""

    def __init__(self, num_blocks: int, name: str):
        self.name = name
        self.num_blocks = num_blocks
        self.refcount = [0] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_of: dict[int, bytes] = {}
        self.block_of: dict[bytes, int] = {}
        self.num_evictions = 0

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def allocate(self) -> int:
        """Take the least recently freed block; a cached one loses its hash (evicted)."""
        block, _ = self.free.popitem(last=False)
        h = self.hash_of.pop(block, None)
        if h is not None:
            del self.block_of[h]
            self.num_evictions += 1
        self.refcount[block] = 1
        return block

    def acquire(self, block: int) -> None:
        """Take one more reference to a cached block (revives it if it was free)."""
        if self.refcount[block] == 0:
            del self.free[block]
        self.refcount[block] += 1

    def release(self, block: int) -> None:
        """Drop a reference; at zero a cached block stays (newest), others are reused first."""
        self.refcount[block] -= 1
        if self.refcount[block] == 0:
            self.free[block] = None
            if block not in self.hash_of:
                self.free.move_to_end(block, last=False)

    def lookup(self, h: bytes) -> int | None:
        return self.block_of.get(h)

    def register(self, block: int, h: bytes) -> None:
        """Offer a full, computed block to the cache (the first block with a given hash wins)."""
        if h not in self.block_of and block not in self.hash_of:
            self.block_of[h] = block
            self.hash_of[block] = h

    def reset_cache(self) -> None:
        """Forget every hash of a free block (used blocks keep theirs)."""
        for block in [b for b in self.hash_of if self.refcount[b] == 0]:
            del self.block_of[self.hash_of.pop(block)]

    def check(self, refs: Counter[int]) -> None:
        """Raise InvariantError unless counts, free list and hash index agree with `refs`."""
        for b in range(self.num_blocks):
            if self.refcount[b] != refs.get(b, 0):
                raise InvariantError(f"{self.name} block {b}: refcount {self.refcount[b]} "
                                     f"but {refs.get(b, 0)} references")
            if (self.refcount[b] == 0) != (b in self.free):
                raise InvariantError(f"{self.name} block {b}: free list disagrees with refcount")
        if self.num_free + sum(1 for c in self.refcount if c > 0) != self.num_blocks:
            raise InvariantError(f"{self.name}: free + used != total")
        for b, h in self.hash_of.items():
            if self.block_of.get(h) != b:
                raise InvariantError(f"{self.name} block {b}: hash index inconsistent")
        if len(self.block_of) != len(self.hash_of):
            raise InvariantError(f"{self.name}: hash index sizes differ")


class BlockManager:
    """Both pools plus the per-sequence operations the scheduler needs."""

    def __init__(self, num_full_blocks: int, num_sliding_blocks: int, block_size: int,
                 sliding_window: int):
        self.block_size = block_size
        self.window = sliding_window
        self.full = BlockPool(num_full_blocks, "full")
        self.sliding = BlockPool(num_sliding_blocks, "sliding")

    # ---- geometry ------------------------------------------------------------------------------
    def first_window_block(self, pos: int) -> int:
        """First logical block holding a key that the token at position `pos` attends to."""
        return max(0, pos - self.window + 1) // self.block_size

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def max_sliding_blocks_per_seq(self, max_chunk: int) -> int:
        """Most sliding blocks one sequence holds during a step of `max_chunk` new tokens."""
        return self.blocks_for(self.window - 1 + max_chunk) + 1

    # ---- prefix cache --------------------------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> int:
        """Number of leading blocks of `seq` both pools can serve (at least one token stays new)."""
        limit = (seq.num_tokens - 1) // self.block_size
        hashes = seq.hashes_upto(limit, self.block_size)
        k = 0
        while k < limit and self.full.lookup(hashes[k]) is not None:
            k += 1
        while k > 0 and not self._window_cached(hashes, k):
            k -= 1
        return k

    def _window_cached(self, hashes: list[bytes], k: int) -> bool:
        first = self.first_window_block(k * self.block_size)
        return all(self.sliding.lookup(h) is not None for h in hashes[first:k])

    # ---- allocation ----------------------------------------------------------------------------
    def allocate(self, seq: Sequence, num_new: int, num_hit_blocks: int = 0) -> bool:
        """Give `seq` slots for `num_new` more tokens in both pools, or change nothing and say no.

        A sequence without blocks first takes `num_hit_blocks` cached blocks (from match_prefix)
        and starts with those tokens computed.
        """
        bs = self.block_size
        if seq.full_blocks and (seq.num_computed_tokens + num_new - 1) // bs < len(seq.full_blocks):
            return True  # the tokens fit the blocks it has (most decode steps)
        start = num_hit_blocks * bs if not seq.full_blocks else seq.num_computed_tokens
        have = max(len(seq.full_blocks), num_hit_blocks)
        num_fresh = self.blocks_for(start + num_new) - have
        hits_full, hits_slide = self._hit_blocks(seq, num_hit_blocks)
        revive_full = sum(1 for b in hits_full if self.full.refcount[b] == 0)
        revive_slide = sum(1 for b in hits_slide if b >= 0 and self.sliding.refcount[b] == 0)
        if (self.full.num_free < num_fresh + revive_full
                or self.sliding.num_free < num_fresh + revive_slide):
            return False
        if num_hit_blocks:
            self._take_hits(seq, hits_full, hits_slide)
        for _ in range(num_fresh):
            seq.full_blocks.append(self.full.allocate())
            seq.sliding_blocks.append(self.sliding.allocate())
        return True

    def _hit_blocks(self, seq: Sequence, k: int) -> tuple[list[int], list[int]]:
        if k == 0 or seq.full_blocks:
            return [], []
        hashes = seq.hashes_upto(k, self.block_size)
        first = self.first_window_block(k * self.block_size)
        full = [self.full.block_of[h] for h in hashes]
        slide = [-1 if i < first else self.sliding.block_of[h] for i, h in enumerate(hashes)]
        return full, slide

    def _take_hits(self, seq: Sequence, full: list[int], slide: list[int]) -> None:
        for b in full:
            self.full.acquire(b)
        for b in slide:
            if b >= 0:
                self.sliding.acquire(b)
        seq.full_blocks = list(full)
        seq.sliding_blocks = list(slide)
        seq.num_computed_tokens = len(full) * self.block_size
        seq.num_registered_blocks = len(full)
        seq.num_trimmed_blocks = self.first_window_block(seq.num_computed_tokens)

    # ---- after a step --------------------------------------------------------------------------
    def commit(self, seq: Sequence) -> None:
        """Register newly completed blocks in the cache, then return sliding blocks out of reach."""
        done = seq.num_computed_tokens // self.block_size
        if done > seq.num_registered_blocks:
            hashes = seq.hashes_upto(done, self.block_size)
            for i in range(seq.num_registered_blocks, done):
                self.full.register(seq.full_blocks[i], hashes[i])
                if seq.sliding_blocks[i] >= 0:
                    self.sliding.register(seq.sliding_blocks[i], hashes[i])
            seq.num_registered_blocks = done
        first = self.first_window_block(seq.num_computed_tokens)
        for i in range(seq.num_trimmed_blocks, first):
            if seq.sliding_blocks[i] >= 0:
                self.sliding.release(seq.sliding_blocks[i])
                seq.sliding_blocks[i] = -1
        seq.num_trimmed_blocks = max(first, seq.num_trimmed_blocks)

    def free(self, seq: Sequence) -> None:
        """Return every block of `seq`, tail first (so the prompt's head is evicted last)."""
        for b in reversed(seq.sliding_blocks):
            if b >= 0:
                self.sliding.release(b)
        for b in reversed(seq.full_blocks):
            self.full.release(b)
        seq.full_blocks, seq.sliding_blocks = [], []
        seq.num_computed_tokens = 0
        seq.num_registered_blocks = seq.num_trimmed_blocks = 0

    # ---- checks --------------------------------------------------------------------------------
    def check_invariants(self, live: Iterable[Sequence]) -> None:
        """Raise InvariantError on: a block counted wrong, owned twice without being a shared
        cached block, free + used != total, or a table not covering the computed tokens."""
        full_refs: Counter[int] = Counter()
        slide_refs: Counter[int] = Counter()
        for seq in live:
            self._check_seq(seq)
            full_refs.update(seq.full_blocks)
            slide_refs.update(b for b in seq.sliding_blocks if b >= 0)
        self.full.check(full_refs)
        self.sliding.check(slide_refs)
        for pool, refs in ((self.full, full_refs), (self.sliding, slide_refs)):
            shared = [b for b, c in refs.items() if c > 1 and b not in pool.hash_of]
            if shared:
                raise InvariantError(f"{pool.name} blocks {shared} owned twice but not cached")

    def _check_seq(self, seq: Sequence) -> None:
        if len(seq.full_blocks) != len(seq.sliding_blocks):
            raise InvariantError(f"seq {seq.seq_id}: tables differ in length")
        if len(set(seq.full_blocks)) != len(seq.full_blocks):
            raise InvariantError(f"seq {seq.seq_id}: a full block appears twice in its table")
        if len(seq.full_blocks) * self.block_size < seq.num_computed_tokens:
            raise InvariantError(f"seq {seq.seq_id}: table shorter than its computed tokens")
        first = self.first_window_block(seq.num_computed_tokens)
        if any(b < 0 for b in seq.sliding_blocks[first:]):
            raise InvariantError(f"seq {seq.seq_id}: a sliding block inside the window is absent")
