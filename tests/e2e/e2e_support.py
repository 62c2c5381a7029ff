"""Helpers for end-to-end tests: start uvicorn with an app on a free port, poll a condition."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from gptoss_serve.api.app import create_app
from gptoss_serve.config import ServerConfig
from gptoss_serve.harmony.tokenizer import get_tokenizer

MODEL = "gpt-oss-tiny"


@dataclass
class Running:
    base_url: str
    engine: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.server.loop  # set in _serve

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start(engine: Any, **cfg: Any) -> Running:
    """Serve create_app(engine) with uvicorn on a free port; return when it accepts requests."""
    config = ServerConfig(served_model_names=(MODEL,), current_date="2025-06-28", **cfg)
    app = create_app(engine, config, get_tokenizer())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))

    def _serve() -> None:
        async def main() -> None:
            server.loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        asyncio.run(main())

    thread = threading.Thread(target=_serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    return Running(f"http://127.0.0.1:{port}", engine, server, thread)


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `cond` (a safety deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for: {what}"
        time.sleep(0.05)
