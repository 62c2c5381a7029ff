"""EngineStats: the numbers the API exports about the engine (/metrics, /health).

Owns only the data definition; the scheduler fills it. Knows nothing of Prometheus or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    num_running_requests: int  # requests with at least one sequence holding KV blocks
    num_waiting_requests: int  # requests queued (new or preempted) and not running
    full_blocks_used: int  # full-attention pool
    full_blocks_free: int  # includes freed blocks still cached for prefix hits
    sliding_blocks_used: int  # sliding-window pool
    sliding_blocks_free: int
    prefix_cache_queried_tokens: int  # prompt tokens looked up at first admission
    prefix_cache_hit_tokens: int  # of those, served from the cache
    num_preemptions: int  # sequences preempted (recomputed later) since start
    num_tokens_last_step: int  # tokens computed by the last step (prefill + decode)
    num_steps: int  # engine steps run since start

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hit_tokens / max(1, self.prefix_cache_queried_tokens)
