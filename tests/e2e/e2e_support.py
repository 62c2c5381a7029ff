"""Helpers for end-to-end tests: start uvicorn with an app on a free port, poll a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgi_server import Served, serve_in_thread
from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import fold_stream, message_fields, without_ids
from gptoss_serve.config import ServerConfig
from gptoss_serve.harmony.tokenizer import get_tokenizer

MODEL = "gpt-oss-tiny"


@dataclass
class Running:
    base_url: str
    engine: Any
    served: Served

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.served.loop

    def stop(self) -> None:
        self.served.stop()


def start(engine: Any, **cfg: Any) -> Running:
    """Serve create_app(engine) with uvicorn on a free port; return when it accepts requests."""
    config = ServerConfig(served_model_names=(MODEL,), current_date="2025-06-28", **cfg)
    app = create_app(engine, config, get_tokenizer())
    served = serve_in_thread(app, timeout_graceful_shutdown=1)
    return Running(served.base_url, engine, served)


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `cond` (a safety deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for: {what}"
        time.sleep(0.05)


def stream_matches_full(client: Any, **args: Any) -> tuple[Any, list[Any], dict[str, Any]]:
    """The same chat request sent whole and streamed (with usage) through the `openai` client;
    asserts that each folded choice equals its non-streamed choice and returns (full, chunks,
    folded) for the caller's own checks (usage, the first chunk)."""
    full = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True,
                                                 stream_options={"include_usage": True}))
    folded = fold_stream(chunks)
    for c in full.choices:
        assert without_ids(folded["choices"][c.index]) == without_ids(message_fields(c))
    return full, chunks, folded
