"""Token-in, token-out continuous batching: block manager, scheduler, sampler, runner, engines.

Knows nothing of harmony, HTTP or JSON (see docs/architecture.md)."""
