"""What only ProcessAsyncLLM (the engine in a child process) has: per-step deltas that rebuild each request in
this process, the engine's errors raised here, a failed step or a killed engine process reaching every caller,
and no engine process outliving its parent (tiny random model on CPU). The AsyncLLM behaviour both backends share
(outputs equal offline, batching across callers, aborts, bad input) is tested on both in test_async_llm.py."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from tokenleap import ProcessAsyncLLM, SamplingParams
from tokenleap.async_llm import EngineDeadError
from tokenleap.engine.request import Request, RequestStatus
from tokenleap.engine_core.deltas import PendingDeltas, Sent, apply_delta, stream_delta
from tokenleap.outputs import Logprob

PROMPTS = ["The quick brown fox", "def add(a, b):", "Hello world! How are"]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
KW = dict(disable_log_stats=True, kv_cache_memory_bytes=8 << 20)


# -- deltas (pure) ------------------------------------------------------------------------------------
def _req(**kw) -> Request:
    return Request(request_id="r", prompt_token_ids=[1, 2], params=SamplingParams(**kw), seed=0, stream=0,
                   max_tokens=10, eos_token_ids=frozenset())


def test_deltas_rebuild_the_request_text_cut_included():
    eng, copy, sent = _req(logprobs=1), _req(logprobs=1), Sent()
    states = [([5], "He", RequestStatus.RUNNING), ([5, 6], "Hello", RequestStatus.RUNNING),
              ([5, 6], "Hello", RequestStatus.RUNNING),  # nothing new: no delta
              ([5, 6, 7, 8], "Hello wo", RequestStatus.RUNNING),
              ([5, 6, 7, 8, 9], "Hello", RequestStatus.FINISHED_STOPPED)]  # a stop string cut the text
    n_deltas = 0
    for ids, text, status in states:
        new = ids[len(eng.output_token_ids):]
        eng.output_token_ids.extend(new)
        eng.logprobs.extend({t: Logprob(-0.5 * t)} for t in new)
        eng.cumulative_logprob -= len(new)
        eng.text, eng.status = text, status
        if status.finished:
            eng.finish_reason, eng.stop_reason = "stop", " wo"
        d = stream_delta(eng, sent)
        if d is not None:
            n_deltas += 1
            apply_delta(copy, d)
        assert (copy.output_token_ids, copy.text, copy.status) == (eng.output_token_ids, eng.text, eng.status)
        assert copy.logprobs == eng.logprobs and copy.cumulative_logprob == eng.cumulative_logprob
    assert n_deltas == 4
    assert (copy.finish_reason, copy.stop_reason) == ("stop", " wo")
    assert copy.metrics is eng.metrics or copy.metrics == eng.metrics


@pytest.mark.parametrize("seed", range(20))
def test_merged_deltas_apply_as_the_steps_one_by_one(seed):
    """A random run of steps (tokens appended, text growing and sometimes cut, logprobs): merging the deltas of
    any stretch of steps (PendingDeltas, as the engine process does while the parent is behind) brings a copy to
    the same state as applying them one by one."""
    rng = random.Random(seed)
    eng, one_by_one, merged, sent = _req(logprobs=1), _req(logprobs=1), _req(logprobs=1), Sent()
    pending = PendingDeltas()
    for step in range(40):
        new = [rng.randrange(100) for _ in range(rng.randrange(0, 4))]
        eng.output_token_ids.extend(new)
        eng.logprobs.extend({t: Logprob(-0.1 * t)} for t in new)
        eng.cumulative_logprob -= 0.5 * len(new)
        cut = rng.random() < 0.15 and eng.text
        eng.text = (eng.text[: rng.randrange(len(eng.text))] if cut else eng.text) + "".join(
            rng.choice("ab c") for _ in range(rng.randrange(0, 5)))
        eng.status = RequestStatus.FINISHED_STOPPED if step == 39 else RequestStatus.RUNNING
        d = stream_delta(eng, sent)
        if d is None:
            continue
        apply_delta(one_by_one, d)
        pending.add([d])
        if rng.random() < 0.3 or step == 39:
            (m,) = pending.take()
            apply_delta(merged, m)
            state = lambda r: (r.output_token_ids, r.text, r.logprobs, r.cumulative_logprob, r.status)  # noqa: E731
            assert state(merged) == state(one_by_one) == state(eng)
    assert not pending


# -- the engine process -------------------------------------------------------------------------------
async def _all(aio, prompt, params, rid):
    return [o async for o in aio.generate(prompt, params, rid)]


def _break_step(engine, after: int) -> None:
    real, calls = engine.step, []

    def broken():
        calls.append(1)
        if len(calls) > after:
            raise RuntimeError("device lost")
        return real()

    engine.step = broken


def test_a_bad_model_argument_is_raised_here(tiny_checkpoint):
    with pytest.raises(ValueError, match="max_model_len"):
        ProcessAsyncLLM(str(tiny_checkpoint("llama")), max_model_len=10**7, **KW)


@pytest.mark.parametrize("how", ["step", "kill"])
def test_a_failing_step_and_a_killed_process_reach_every_caller(tiny_checkpoint, torch_one_thread, how):
    aio = ProcessAsyncLLM(str(tiny_checkpoint("llama")), **KW)
    params = SamplingParams(temperature=0, max_tokens=300, ignore_eos=True)

    async def main():
        gens = [aio.generate(p, params, f"{how}{i}") for i, p in enumerate(PROMPTS)]
        for g in gens:
            await anext(g)
        if how == "step":
            await aio.call_engine(_break_step, 2)
        else:
            os.kill(aio.pid, signal.SIGKILL)

        async def drain(g):
            async for _ in g:
                pass

        return await asyncio.wait_for(asyncio.gather(*(drain(g) for g in gens), return_exceptions=True), 60)

    try:
        errors = asyncio.run(main())
        assert all(isinstance(e, EngineDeadError) for e in errors), errors
        if how == "step":
            assert all("RuntimeError: device lost" in str(e) for e in errors), errors
        assert not aio.is_running
        with pytest.raises(EngineDeadError):
            asyncio.run(_all(aio, "hi", GREEDY, "after"))
    finally:
        aio.shutdown()
    assert aio._proc.exitcode is not None


def test_the_engine_process_ends_with_its_parent(tiny_checkpoint, tmp_path):
    """A parent that dies without shutdown() (os._exit) leaves no engine process behind."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from tokenleap import ProcessAsyncLLM
        if __name__ == "__main__":
            aio = ProcessAsyncLLM({str(tiny_checkpoint("llama"))!r}, disable_log_stats=True,
                                  kv_cache_memory_bytes=8 << 20)
            print(aio.pid, flush=True)
            os._exit(0)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=True)
    pid = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, f"engine process {pid} outlived its parent"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
