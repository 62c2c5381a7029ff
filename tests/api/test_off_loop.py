"""CPU work of a request (tokenizing a long prompt) runs off the event loop: /health answers while
it is going on (issue 14.4; a 20 MB prompt used to stall every other request for 22 s)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import FakeEngine, fixed_script
from gptoss_serve.config import ServerConfig

MODEL = "gpt-oss-test"
BLOCK = "a prompt whose tokenization takes a while"


class SlowTokenizer:
    """The real tokenizer, except that encoding BLOCK waits until the test releases it."""

    def __init__(self, tok):
        self._tok = tok
        self.entered, self.release = threading.Event(), threading.Event()
        self.encode_done = False

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def encode(self, text, *args, **kw):
        if text == BLOCK:
            self.entered.set()
            self.release.wait(timeout=5)  # a safety bound: on the loop this blocks everything
            self.encode_done = True
        return self._tok.encode(text, *args, **kw)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"model": MODEL, "prompt": BLOCK, "max_tokens": 1}),
    ("/tokenize", {"model": MODEL, "prompt": BLOCK}),
])
def test_health_answers_while_a_prompt_is_tokenized(tok, path, body):
    slow = SlowTokenizer(tok)
    app = create_app(FakeEngine(fixed_script([0])), ServerConfig(served_model_names=(MODEL,)),
                     slow)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            big = asyncio.create_task(client.post(path, json=body))
            await asyncio.to_thread(slow.entered.wait, 10)
            health = await client.get("/health")
            answered_during_encode = not slow.encode_done
            slow.release.set()
            return health.status_code, answered_during_encode, (await big).status_code

    health, during, big = asyncio.run(main())
    assert health == 200 and big == 200
    assert during, "/health had to wait for the tokenizer"
