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
from tokenleap import LLM, ProcessAsyncLLM, SamplingParams
from tokenleap.async_llm import EngineDeadError
from tokenleap.engine.request import Request, RequestStatus
from tokenleap.engine_core.deltas import Sent, apply_step, collect_step
from tokenleap.outputs import Logprob

PROMPTS = ["The quick brown fox", "def add(a, b):", "Hello world! How are"]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
KW = dict(disable_log_stats=True, kv_cache_memory_bytes=8 << 20)


# -- deltas (pure) ------------------------------------------------------------------------------------
def _req(rid="r", **kw) -> Request:
    return Request(request_id=rid, prompt_token_ids=[1, 2], params=SamplingParams(**kw), seed=0, stream=0,
                   max_tokens=10, eos_token_ids=frozenset())


def _state(r: Request) -> tuple:
    return (r.output_token_ids, r.text, r.logprobs, r.cumulative_logprob, r.status, r.finish_reason, r.stop_reason)


def test_step_changes_rebuild_the_request_text_cut_included():
    """Columns for plain appends, whole deltas for the first change, a text cut and the end."""
    eng, copy, sent = _req(), _req(), Sent()
    states = [([5], "He", RequestStatus.RUNNING, "delta"), ([5, 6], "Hello", RequestStatus.RUNNING, "columns"),
              ([5, 6], "Hello", RequestStatus.RUNNING, None),  # nothing new
              ([5, 6, 7, 8], "Hello wo", RequestStatus.RUNNING, "columns"),
              ([5, 6, 7, 8, 9], "Hello", RequestStatus.FINISHED_STOPPED, "delta")]  # a stop string cut the text
    for ids, text, status, how in states:
        eng.output_token_ids.extend(ids[len(eng.output_token_ids):])
        eng.text, eng.status = text, status
        if status.finished:
            eng.finish_reason, eng.stop_reason = "stop", " wo"
        changes = collect_step([(7, eng, sent)])
        assert (bool(changes.handles), bool(changes.deltas)) == (how == "columns", how == "delta")
        assert apply_step(changes, {7: copy}) == ([7] if how else [])
        assert _state(copy) == _state(eng)
    assert copy.metrics is not None


@pytest.mark.parametrize("seed", range(20))
def test_step_changes_of_a_random_run_rebuild_every_request(seed):
    """Three requests (one with logprobs) over a random run (tokens appended, text growing and sometimes cut,
    requests ending), the steps' changes kept and applied several at a time as the engine process sends them
    while the parent is behind: every copy equals its request after each delivery."""
    rng = random.Random(seed)
    engs = [_req("a"), _req("b", logprobs=1), _req("c")]
    copies = [_req("a"), _req("b", logprobs=1), _req("c")]
    sents = [Sent() for _ in engs]
    kept = []
    for step in range(40):
        for eng in engs:
            if eng.status.finished:
                continue
            new = [rng.randrange(100) for _ in range(rng.randrange(0, 4))]
            eng.output_token_ids.extend(new)
            if eng.logprobs is not None:
                eng.logprobs.extend({t: Logprob(-0.1 * t)} for t in new)
                eng.cumulative_logprob -= 0.5 * len(new)
            cut = rng.random() < 0.1 and eng.text
            eng.text = (eng.text[: rng.randrange(len(eng.text))] if cut else eng.text) + "".join(
                rng.choice("ab c") for _ in range(rng.randrange(0, 5)))
            eng.status = RequestStatus.RUNNING
            if rng.random() < 0.05 or step == 39:
                eng.status, eng.finish_reason = RequestStatus.FINISHED_LENGTH, "length"
        kept.append(collect_step([(i, e, s) for i, (e, s) in enumerate(zip(engs, sents))]))
        if rng.random() < 0.3 or step == 39:
            for changes in kept:
                apply_step(changes, dict(enumerate(copies)))
            kept = []
            assert [_state(c) for c in copies] == [_state(e) for e in engs]


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
    """Running, not a zombie (exited, not yet reaped by init)."""
    from test_tensor_parallel import _stat

    st = _stat(pid)
    return st is not None and st[0] != "Z"


def test_tensor_parallel_engine_process_equals_offline_and_leaves_no_process(tiny_checkpoint):
    """tensor_parallel_size=2 inside the engine process (its workers are the child's subprocesses): greedy tokens
    equal offline TP = 1, and after shutdown no process of ours is left (engine process and workers)."""
    from test_tensor_parallel import children

    folder = str(tiny_checkpoint("llama"))
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    ref = LLM(model=folder, **KW).generate(PROMPTS, params, use_tqdm=False)
    aio = ProcessAsyncLLM(folder, tensor_parallel_size=2, **KW)
    try:
        outs = asyncio.run(aio.generate_all(PROMPTS, params))
    finally:
        aio.shutdown()
    assert [o.outputs[0].token_ids for o in outs] == [r.outputs[0].token_ids for r in ref]
    assert children() == []
