"""AsyncEngine: concurrent requests through the background loop, abort, admission errors, and
engine death reaching every pending request."""

from __future__ import annotations

import asyncio

import pytest
from test_engine import make_llm, reference

from gptoss_serve.engine.async_engine import AsyncEngine
from gptoss_serve.engine.request import EngineRequest, SamplingParams
from gptoss_serve.errors import ContextLengthError, EngineDeadError, InvalidRequestError

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def request(rid: str, prompt, params: SamplingParams = GREEDY) -> EngineRequest:
    return EngineRequest(rid, tuple(prompt), params)


async def collect(engine: AsyncEngine, req: EngineRequest) -> list[int]:
    tokens = []
    async for out in engine.generate(req):
        tokens.extend(out.new_token_ids)
    return tokens


def test_concurrent_requests_get_their_own_tokens():
    async def main():
        engine = AsyncEngine(make_llm().engine)
        prompts = [list(range(i, i + 5 + 3 * i)) for i in range(8)]
        results = await asyncio.gather(*(collect(engine, request(f"r{i}", p))
                                         for i, p in enumerate(prompts)))
        await engine.shutdown()
        return prompts, results

    prompts, results = asyncio.run(main())
    assert results == [reference(p, 12) for p in prompts]


def test_abort_finishes_the_stream_and_frees_blocks():
    async def main():
        engine = AsyncEngine(make_llm().engine)
        long = SamplingParams(temperature=0.0, max_tokens=10_000, ignore_eos=True)
        outs = []
        async for out in engine.generate(request("a", range(20), long)):
            outs.append(out)
            if len(outs) == 3:
                engine.abort("a")
                engine.abort("a")
        stats = engine.stats()
        await engine.shutdown()
        return outs, stats

    outs, stats = asyncio.run(main())
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert stats.full_blocks_used == 0 and stats.sliding_blocks_used == 0
    assert stats.num_running_requests == 0


def test_a_consumer_that_stops_iterating_aborts_its_request():
    async def main():
        engine = AsyncEngine(make_llm().engine)
        long = SamplingParams(temperature=0.0, max_tokens=10_000, ignore_eos=True)
        gen = engine.generate(request("a", range(20), long))
        await gen.__anext__()
        await gen.aclose()
        for _ in range(200):  # wait (bounded) for the loop to process the abort
            if not engine.engine.has_unfinished():
                break
            await asyncio.sleep(0.01)
        unfinished = engine.engine.has_unfinished()
        await engine.shutdown()
        return unfinished

    assert asyncio.run(main()) is False


def test_a_prompt_that_cannot_fit_is_refused_at_admission():
    async def main():
        engine = AsyncEngine(make_llm(full_blocks=10).engine)
        assert engine.max_model_len == 40
        with pytest.raises(ContextLengthError):
            await collect(engine, request("a", range(45)))
        await engine.shutdown()

    asyncio.run(main())


class Boom(RuntimeError):
    pass


def test_engine_death_reaches_every_pending_request():
    async def main():
        llm = make_llm()
        inner = llm.engine.runner

        class Dying:
            calls = 0

            def execute(self, out):
                Dying.calls += 1
                if Dying.calls == 3:
                    raise Boom("device lost")
                return inner.execute(out)

        llm.engine.runner = Dying()
        engine = AsyncEngine(llm.engine)
        results = await asyncio.gather(*(collect(engine, request(f"r{i}", range(5 + i)))
                                         for i in range(4)), return_exceptions=True)
        assert engine.is_dead
        with pytest.raises(EngineDeadError):
            await collect(engine, request("late", range(5)))
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, EngineDeadError) for r in results)
    assert "device lost" in results[0].message


def test_cpu_loading_runs_in_a_passing_thread(monkeypatch):
    """On CPU the model is loaded in a thread that ends (so that the main thread owns no OpenMP
    team); its result and its exceptions reach the caller."""
    import threading

    from gptoss_serve.engine import async_engine
    from gptoss_serve.engine import engine as engine_mod

    seen = []

    def from_config(*args, **kwargs):
        seen.append(threading.current_thread())
        if kwargs.get("kernels") == "broken":
            raise EngineDeadError("load failed")
        return make_llm().engine

    monkeypatch.setattr(engine_mod.LLMEngine, "from_config", from_config)
    engine = async_engine.AsyncEngine.from_config("x", device="cpu", cache=None, sched=None)
    try:
        assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
        assert seen[0].name == "engine-load"
    finally:
        asyncio.run(engine.shutdown())
    with pytest.raises(EngineDeadError, match="load failed"):
        async_engine.AsyncEngine.from_config("x", device="cpu", cache=None, sched=None,
                                             kernels="broken")


def _bad_then_good(engine: AsyncEngine, bad: EngineRequest, match: str | None = None) -> None:
    """`bad` fails with a 400 alone: a good request after it runs, the engine stays alive."""
    async def main():
        with pytest.raises(InvalidRequestError, match=match):
            await collect(engine, bad)
        good = await collect(engine, request("good", range(5)))
        dead = engine.is_dead
        await engine.shutdown()
        return good, dead

    good, dead = asyncio.run(main())
    assert good == reference(list(range(5)), 12) and not dead


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, top_k=10**309, top_p=0.5, max_tokens=4),
    SamplingParams(temperature=1.0, logit_bias=((3, 1e300),), max_tokens=4),
    SamplingParams(temperature=1.0, logit_bias=((2**70, 1.0),), max_tokens=4),
])
def test_sampling_params_the_sampler_cannot_hold_fail_that_request_alone(params):
    """One request with top_k = 10**309 used to kill the engine loop for good (issue 14.1)."""
    _bad_then_good(AsyncEngine(make_llm().engine), request("bad", range(5), params))


def test_any_error_adding_a_request_fails_that_request_alone():
    engine = AsyncEngine(make_llm().engine)
    add = engine.engine.scheduler.add_request

    def picky(req):
        if req.request_id == "bad":
            raise RuntimeError("cannot prepare")
        add(req)

    engine.engine.scheduler.add_request = picky
    _bad_then_good(engine, request("bad", range(5)), match="cannot prepare")


def test_each_request_is_validated_once_on_every_path():
    """AsyncEngine.generate and LLM.generate check a request once (LLMEngine.validate), not
    again when it is queued (issue 16: it used to run three times per request)."""
    llm = make_llm()
    seen: list[str] = []
    check = llm.engine.scheduler.validate
    llm.engine.scheduler.validate = lambda req: (seen.append(req.request_id), check(req))[1]

    async def main():
        engine = AsyncEngine(llm.engine)
        tokens = await collect(engine, request("a", range(5)))
        await engine.shutdown()
        return tokens

    assert asyncio.run(main()) == reference(list(range(5)), 12)
    assert seen == ["a"]
    seen.clear()
    outs = llm.generate([list(range(5)), list(range(7))], GREEDY)
    assert len(seen) == 2 and [len(o.outputs[0].token_ids) for o in outs] == [12, 12]
    with pytest.raises(ContextLengthError):  # still refused, before anything is queued
        llm.generate([list(range(5)), [1] * 10**5], GREEDY)
    assert not llm.engine.has_unfinished()
