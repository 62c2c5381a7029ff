"""Serve any ASGI app with uvicorn in a thread, on a socket bound before the server starts."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn


@dataclass
class Served:
    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.server.loop  # set when serving starts

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve_in_thread(app: Any, **uvicorn_options: Any) -> Served:
    """Start serving `app` on 127.0.0.1 (a free port, bound here: no race); return when it
    accepts requests."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", **uvicorn_options}))

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
    return Served(f"http://127.0.0.1:{port}", server, thread)
