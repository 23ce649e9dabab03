"""AsyncLLM (engine thread) and ProcessAsyncLLM (engine process) from plain asyncio: same outputs as offline,
continuous batching across callers, aborts free KV blocks at once, engine-loop failures reach every caller (tiny
random model on CPU). What only the engine process has (its deltas, its death, its parent's) is in
test_engine_process.py."""

from __future__ import annotations

import asyncio

import pytest
from tokenleap import LLM, AsyncLLM, ProcessAsyncLLM, SamplingParams
from tokenleap.async_llm import EngineDeadError
from tokenleap.config import EngineConfig

PROMPTS = ["The quick brown fox", "def add(a, b):", "Hello world! How are", "the cat sat on the mat; the dog"]
# prompt_lookup_min=1: the tiny random model's outputs seldom repeat longer n-grams (no drafts without it)
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


# bfloat16: the CPU fast path, whose kernels give a row the same bits whatever else its step holds (float32's MKL
# matmuls do not: a request decoded alone gets other low bits than in offline's batch, so exact logprobs would
# depend on when the async requests reached the engine)
DTYPE = "bfloat16"


def _make_llm(folder, **kwargs) -> LLM:
    return LLM(model=str(folder), disable_log_stats=True, kv_cache_memory_bytes=8 << 20, dtype=DTYPE, **kwargs)


@pytest.fixture(scope="module", params=[(None, AsyncLLM), (NGRAM, AsyncLLM), (None, ProcessAsyncLLM),
                                        (NGRAM, ProcessAsyncLLM)],
                ids=["plain", "ngram", "plain-process", "ngram-process"])
def engines(request, tiny_checkpoint, torch_one_thread):
    """(offline LLM, AsyncLLM or ProcessAsyncLLM over a second engine of the same checkpoint); shut down after."""
    spec, cls = request.param
    folder = tiny_checkpoint("llama")
    offline = _make_llm(folder, speculative_config=spec)
    aio = cls(str(folder), disable_log_stats=True, kv_cache_memory_bytes=8 << 20, speculative_config=spec,
              dtype=DTYPE)
    yield offline, aio
    aio.shutdown()
    assert not aio.is_running
    if cls is ProcessAsyncLLM:
        assert aio._proc.exitcode is not None  # the process is gone
    else:
        assert not aio._thread.is_alive()


def _num_steps(engine) -> int:
    return engine.counters.num_steps


def _blocks(engine) -> tuple[int, int, int]:
    """(free KV blocks, usable KV blocks, requests in the engine)"""
    return engine.blocks.num_free_blocks, engine.blocks.num_usable_blocks, len(engine.requests)


async def _final(aio: AsyncLLM, prompt, params, rid):
    outs = [o async for o in aio.generate(prompt, params, rid)]
    return outs


def test_outputs_equal_offline_and_stream_grows(engines):
    """Greedy, seeded sampling with n=2, a stop string with logprobs: the last output is offline generation's."""
    offline, aio = engines
    params = [GREEDY, SamplingParams(temperature=0.8, n=2, seed=7, max_tokens=12),
              SamplingParams(temperature=0, max_tokens=30, stop=["e"], logprobs=2), GREEDY]
    ref = offline.generate(PROMPTS, params, use_tqdm=False)

    async def main():
        return await asyncio.gather(*(_final(aio, p, sp, f"eq-{i}") for i, (p, sp) in enumerate(zip(PROMPTS, params))))

    for r, outs in zip(ref, asyncio.run(main())):
        last = outs[-1]
        assert last.finished and all(not o.finished for o in outs[:-1])
        assert [c.token_ids for c in last.outputs] == [c.token_ids for c in r.outputs]
        assert [c.text for c in last.outputs] == [c.text for c in r.outputs]
        assert [c.finish_reason for c in last.outputs] == [c.finish_reason for c in r.outputs]
        assert [c.logprobs for c in last.outputs] == [c.logprobs for c in r.outputs]
        for a, b in zip(outs, outs[1:]):  # cumulative: each output extends the one before
            assert b.outputs[0].token_ids[: len(a.outputs[0].token_ids)] == a.outputs[0].token_ids
            assert b.outputs[0].text.startswith(a.outputs[0].text)
        if len(r.outputs[0].token_ids) > 2:
            assert len(outs) > 1  # it streamed


def test_agenerate_equals_generate_with_n_and_seed(engines):
    offline, _ = engines
    params = [SamplingParams(temperature=0.8, n=2, seed=7, max_tokens=12),
              SamplingParams(temperature=0, max_tokens=10, stop=["e"])]
    ref = offline.generate(PROMPTS[:2], params, use_tqdm=False)
    got = asyncio.run(offline.agenerate(PROMPTS[:2], params))
    assert [[c.token_ids for c in o.outputs] for o in got] == [[c.token_ids for c in o.outputs] for o in ref]
    assert [[c.text for c in o.outputs] for o in got] == [[c.text for c in o.outputs] for o in ref]
    assert [o.request_id for o in got] != [o.request_id for o in ref]  # fresh ids, no clash with generate's
    offline._async.shutdown()


def test_requests_started_at_different_times_share_steps(engines):
    _, aio = engines
    long = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)  # (B starts long before A ends)

    async def alone(prompt, rid):
        before = await aio.call_engine(_num_steps)
        outs = await _final(aio, prompt, long, rid)
        return await aio.call_engine(_num_steps) - before, outs[-1]

    async def together():
        before = await aio.call_engine(_num_steps)
        first = aio.generate(PROMPTS[0], long, "tog-a")
        outs_a = [await anext(first)]  # A is running ...
        for _ in range(4):
            outs_a.append(await anext(first))
        task_b = asyncio.ensure_future(_final(aio, PROMPTS[1], long, "tog-b"))  # ... when B arrives
        outs_a += [o async for o in first]
        outs_b = await task_b
        return await aio.call_engine(_num_steps) - before, outs_a[-1], outs_b[-1]

    steps_a, ref_a = asyncio.run(alone(PROMPTS[0], "alone-a"))
    steps_b, ref_b = asyncio.run(alone(PROMPTS[1], "alone-b"))
    steps, out_a, out_b = asyncio.run(together())
    assert out_a.outputs[0].token_ids == ref_a.outputs[0].token_ids
    assert out_b.outputs[0].token_ids == ref_b.outputs[0].token_ids
    assert steps < steps_a + steps_b - 4, (steps, steps_a, steps_b)  # B joined A's running batch


@pytest.mark.parametrize("how", ["close", "cancel", "abort"])
def test_abort_frees_blocks_at_once(engines, how):
    _, aio = engines
    params = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)

    async def main():
        gen = aio.generate(PROMPTS[2] * 8, params, f"abort-{how}")
        await anext(gen)
        await anext(gen)
        free, usable, _ = await aio.call_engine(_blocks)
        other = asyncio.ensure_future(_final(aio, PROMPTS[3], GREEDY, f"other-{how}"))
        if how == "close":
            await gen.aclose()
        elif how == "cancel":
            async def consume():
                async for _ in gen:
                    pass

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            await aio.abort(f"abort-{how}")
            rest = [o async for o in gen]  # the aborted stream ends with one last output
            assert rest[-1].finished and rest[-1].outputs[0].finish_reason == "abort"
        other_out = await other
        await aio.abort("no-such-request")  # a round trip through the engine's loop: earlier aborts are done
        return free < usable, other_out[-1], await aio.call_engine(_blocks)

    used, other_out, (free, usable, requests) = asyncio.run(main())
    assert used
    assert other_out.finished and len(other_out.outputs[0].token_ids) == GREEDY.max_tokens  # the other finished
    assert free == usable and requests == 0


def test_bad_input_raises_before_queueing(engines):
    _, aio = engines

    async def main():
        with pytest.raises(ValueError, match=r"prompts\[0\] has \d+ tokens; max_model_len=512"):
            await anext(aio.generate({"prompt_token_ids": [5] * 600}, GREEDY, "too-long"))
        with pytest.raises(TypeError, match="sampling_params is a dict"):
            await anext(aio.generate("hi", {"temperature": 0}, "bad-params"))
        with pytest.raises(ValueError, match=r"sampling_params.logit_bias has token id\(s\) \[1000000\] outside"):
            await anext(aio.generate("hi", SamplingParams(logit_bias={10**6: 1.0}), "bad-bias"))
        gen = aio.generate("hi", GREEDY, "dup")
        await anext(gen)
        with pytest.raises(ValueError, match="request_id='dup' is already running"):
            await anext(aio.generate("hi", GREEDY, "dup"))
        await gen.aclose()
        await aio.abort("no-such-request")  # a round trip through the engine's loop: the close's abort is done
        return await aio.call_engine(_blocks)

    free, usable, requests = asyncio.run(main())
    assert free == usable and requests == 0
    assert [m.name for m in aio.get_metrics()][:2] == ["tokenleap:prompt_tokens", "tokenleap:generation_tokens"]


def test_engine_failure_reaches_every_caller(tiny_checkpoint, torch_one_thread):
    cfg = EngineConfig(model=str(tiny_checkpoint("llama")), disable_log_stats=True, kv_cache_memory_bytes=8 << 20)
    aio = AsyncLLM.from_engine_config(cfg)
    assert aio.config == cfg
    real_step, calls = aio.engine.step, []

    def failing_step():
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("device lost")
        return real_step()

    aio.engine.step = failing_step
    params = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)

    async def main():
        results = await asyncio.wait_for(asyncio.gather(
            *(_final(aio, p, params, f"f-{i}") for i, p in enumerate(PROMPTS)), return_exceptions=True), 30)
        with pytest.raises(EngineDeadError, match="device lost"):
            await anext(aio.generate("hi", params, "after"))
        return results

    try:
        results = asyncio.run(main())
        assert len(results) == len(PROMPTS)
        for r in results:
            assert isinstance(r, EngineDeadError) and "RuntimeError: device lost" in str(r)
        assert not aio.is_running
    finally:
        aio.shutdown()


@pytest.mark.parametrize("cls", [AsyncLLM, ProcessAsyncLLM])
def test_stream_interval_sends_fewer_longer_outputs(tiny_checkpoint, torch_one_thread, cls):
    """stream_interval=5: after the first tokens, each output has grown by at least 5 tokens (the last one aside),
    and the final output is offline generation's."""
    folder = tiny_checkpoint("llama")
    ref = _make_llm(folder).generate(PROMPTS, GREEDY, use_tqdm=False)
    aio = cls(str(folder), stream_interval=5, disable_log_stats=True, kv_cache_memory_bytes=8 << 20, dtype=DTYPE)
    try:
        async def main():
            return await asyncio.gather(*(_final(aio, p, GREEDY, f"si-{i}") for i, p in enumerate(PROMPTS)))

        for r, outs in zip(ref, asyncio.run(main())):
            assert outs[-1].finished and outs[-1].outputs[0].token_ids == r.outputs[0].token_ids
            lens = [len(o.outputs[0].token_ids) for o in outs]
            sent = [n for n in lens if n > 0]
            if cls is AsyncLLM:  # the first tokens go at once (TTFT is not delayed by the interval); the engine
                # process builds an output when its caller reads, so a caller that reads late gets more at once
                assert sent[0] <= 2, lens
            assert all(b - a >= 5 for a, b in zip(sent[:-2], sent[1:-1])), lens
            assert len(outs) <= 2 + 24 // 5, lens  # against 24 + outputs at stream_interval=1
    finally:
        aio.shutdown()


@pytest.mark.parametrize("cls", [AsyncLLM, ProcessAsyncLLM])
@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_stream_interval_must_be_a_positive_int(tiny_checkpoint, bad, cls):
    with pytest.raises(ValueError, match=rf"stream_interval={bad!r}: an int >= 1 is needed"):
        cls(str(tiny_checkpoint("llama")), stream_interval=bad)
