"""The OpenAI-compatible server, driven by the official ``openai`` client on 127.0.0.1 (tiny random model on CPU;
one chat test on the real SmolLM2): outputs equal offline generation with and without speculation, streaming,
concurrency, disconnects, errors."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai
import pytest
from tokenleap import LLM, AsyncLLM, ProcessAsyncLLM, SamplingParams
from tokenleap.server.launch import start_in_thread

# prompt_lookup_min=1: the tiny random model's outputs seldom repeat longer n-grams (no drafts without it)
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
KEY = "test-key"
PROMPTS = ["The quick brown fox", "def add(a, b):", "Hello world! How are", "the cat sat on the mat; the dog"]
MESSAGES = [[{"role": "user", "content": p}] for p in PROMPTS[:2]]


class Served:
    """A server over ``aio`` (an AsyncLLM over ``llm``'s engine, or a ProcessAsyncLLM of the same checkpoint);
    ``llm`` gives the offline reference."""

    def __init__(self, llm: LLM, aio: AsyncLLM | ProcessAsyncLLM, server) -> None:
        self.llm, self.aio, self.server = llm, aio, server
        self.url = server.base_url
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0)

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics").text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", text, re.M)}

    def wait_idle(self, timeout: float = 30.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if m["tokenleap_num_requests_running"] == 0 and m["tokenleap_kv_cache_usage_perc"] == 0:
                return m
            assert time.monotonic() < deadline, m
            time.sleep(0.05)

    def engine(self, fn):
        """fn(engine), run where the engine runs."""
        return asyncio.run(self.aio.call_engine(fn))


def _num_steps(engine) -> int:
    return engine.counters.num_steps


def _all_blocks_free(engine) -> bool:
    return engine.blocks.num_free_blocks == engine.blocks.num_usable_blocks and not engine.requests


def _serve(llm: LLM, names=("tiny",)) -> Served:
    aio = AsyncLLM.from_llm(llm)
    return Served(llm, aio, start_in_thread(aio, list(names), api_key=KEY))


def _stop(s: Served) -> None:
    s.server.stop()
    s.aio.shutdown()
    assert not s.server.thread.is_alive() and not s.aio.is_running


@pytest.fixture(scope="module", params=[(None, False), (NGRAM, False), (NGRAM, True)],
                ids=["plain", "ngram", "ngram-engine-process"])
def served(request, tiny_checkpoint, torch_one_thread):
    spec, engine_process = request.param
    kw = dict(disable_log_stats=True, kv_cache_memory_bytes=8 << 20, speculative_config=spec)
    llm = LLM(model=str(tiny_checkpoint("llama")), **kw)
    if engine_process:
        aio = ProcessAsyncLLM(str(tiny_checkpoint("llama")), **kw)
        s = Served(llm, aio, start_in_thread(aio, ["tiny"], api_key=KEY))
    else:
        s = _serve(llm)
    request.addfinalizer(lambda: _stop(s))
    return s


def _greedy(max_tokens=20, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, **kw)


# -- outputs --------------------------------------------------------------------------------------------
def test_completions_equal_offline(served):
    ref = served.llm.generate(PROMPTS, _greedy(), use_tqdm=False)
    resp = served.client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=20, temperature=0)
    assert [c.text for c in sorted(resp.choices, key=lambda c: c.index)] == [r.outputs[0].text for r in ref]
    assert [c.finish_reason for c in resp.choices] == [r.outputs[0].finish_reason for r in ref]
    assert resp.usage.prompt_tokens == sum(len(r.prompt_token_ids) for r in ref)
    assert resp.usage.completion_tokens == sum(len(r.outputs[0].token_ids) for r in ref)
    spec = resp.model_extra.get("spec_decode")
    if served.aio.speculative_config is None:
        assert spec is None
    else:  # the request's own acceptance figures: the sum of the offline run's per-request ones
        assert spec["num_draft_tokens"] == sum(r.metrics.spec_decode.num_draft_tokens for r in ref) > 0
        assert spec["num_accepted_tokens"] == sum(r.metrics.spec_decode.num_accepted_tokens for r in ref)
        assert spec["mean_acceptance_length"] >= 1.0
    one = served.client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=20, temperature=0)
    assert one.choices[0].text == ref[1].outputs[0].text


def test_chat_equals_offline(served):
    ref = served.llm.chat(MESSAGES, _greedy(), use_tqdm=False)
    for msgs, r in zip(MESSAGES, ref):
        resp = served.client.chat.completions.create(model="tiny", messages=msgs, max_completion_tokens=20,
                                                     temperature=0)
        assert resp.choices[0].message.content == r.outputs[0].text
        assert resp.choices[0].message.role == "assistant"
        assert resp.usage.prompt_tokens == len(r.prompt_token_ids)


def test_response_format_and_logit_bias_equal_offline(served):
    """``response_format`` maps onto structured outputs and ``logit_bias`` onto SamplingParams: the server's
    answers equal offline generation with the same constraint."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    ref = served.llm.chat([MESSAGES[0]], _greedy(40, structured_outputs={"json": schema}), use_tqdm=False)[0]
    resp = served.client.chat.completions.create(
        model="tiny", messages=MESSAGES[0], max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert resp.choices[0].message.content == ref.outputs[0].text
    bias = {7: 100.0}
    ref = served.llm.generate(PROMPTS[:1], _greedy(8, logit_bias=bias), use_tqdm=False)[0]
    resp = served.client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=8, temperature=0,
                                            logit_bias={"7": 100.0})
    assert resp.choices[0].text == ref.outputs[0].text and ref.outputs[0].token_ids == [7] * 8


def _stream_text(stream) -> tuple[dict[int, str], dict[int, str], object]:
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk
        for c in chunk.choices:
            piece = c.delta.content if hasattr(c, "delta") else c.text
            texts[c.index] = texts.get(c.index, "") + (piece or "")
            if c.finish_reason is not None:
                reasons[c.index] = c.finish_reason
    return texts, reasons, usage


@pytest.mark.parametrize("extra", [{}, {"stop": ["e", "on"]}, {"n": 2, "temperature": 0.9, "seed": 3}],
                         ids=["greedy", "stop", "n2-seed"])
def test_streamed_equals_non_streamed(served, extra):
    kw = {"model": "tiny", "max_tokens": 24, "temperature": 0, **extra}
    streamed = {}
    for endpoint, args in (("completions", dict(prompt=PROMPTS[2])), ("chat", dict(messages=MESSAGES[0]))):
        create = served.client.completions.create if endpoint == "completions" else served.client.chat.completions.create
        full = create(**args, **kw)
        texts, reasons, usage = _stream_text(create(**args, **kw, stream=True, stream_options={"include_usage": True}))
        want = {c.index: (c.text if endpoint == "completions" else c.message.content) for c in full.choices}
        assert texts == want
        streamed[endpoint] = texts
        assert reasons == {c.index: c.finish_reason for c in full.choices}
        assert usage.usage.completion_tokens == full.usage.completion_tokens
        assert usage.choices == []
    if "n" in extra:  # seeded sampling, n streams: the same as offline
        ref = served.llm.generate(PROMPTS[2], SamplingParams(max_tokens=24, temperature=0.9, seed=3, n=2),
                                  use_tqdm=False)[0]
        assert [streamed["completions"][i] for i in range(2)] == [ref.outputs[0].text, ref.outputs[1].text]
    if "stop" in extra:
        ref = served.llm.generate(PROMPTS[2], _greedy(24, stop=["e", "on"]), use_tqdm=False)[0]
        assert streamed["completions"][0] == ref.outputs[0].text


def test_logprobs_match_offline(served):
    ref = served.llm.chat(MESSAGES[0], _greedy(8, logprobs=2), use_tqdm=False)[0].outputs[0]
    resp = served.client.chat.completions.create(model="tiny", messages=MESSAGES[0], max_tokens=8, temperature=0,
                                                 logprobs=True, top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert len(content) == len(ref.token_ids) == 8
    for entry, tid, lps in zip(content, ref.token_ids, ref.logprobs):
        assert entry.logprob == pytest.approx(lps[tid].logprob, abs=1e-5)
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    comp = served.client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=5, temperature=0, logprobs=1)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == comp.choices[0].text or "\ufffd" in "".join(lp.tokens)


def test_64_concurrent_streaming_clients(served):
    prompts = [f"{PROMPTS[i % 4]} {i}" for i in range(64)]
    ref = served.llm.generate(prompts, _greedy(16), use_tqdm=False)

    async def main():
        client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0)

        async def one(p):
            stream = await client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0, stream=True)
            return "".join([c.choices[0].text async for c in stream if c.choices])

        try:
            return await asyncio.wait_for(asyncio.gather(*(one(p) for p in prompts)), 120)
        finally:
            await client.close()

    before = served.engine(_num_steps)
    texts = asyncio.run(main())
    assert texts == [r.outputs[0].text for r in ref]
    steps = served.engine(_num_steps) - before
    one_at_a_time = sum(r.metrics.num_generation_steps for r in ref)  # each request's own decode/verify steps
    assert steps < one_at_a_time / 2, (steps, one_at_a_time)  # batched together
    served.wait_idle()


def test_disconnect_mid_stream_aborts_and_frees_blocks(served):
    async def main():
        async with httpx.AsyncClient(base_url=served.url, timeout=60,
                                     headers={"Authorization": f"Bearer {KEY}"}) as client:
            others = [asyncio.ensure_future(client.post("/v1/completions", json=dict(
                model="tiny", prompt=p, max_tokens=40, temperature=0, ignore_eos=True))) for p in PROMPTS[:3]]
            body = dict(model="tiny", prompt=PROMPTS[3] * 4, max_tokens=400, temperature=0, ignore_eos=True,
                        stream=True)
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                assert resp.status_code == 200
                n = 0
                async for line in resp.aiter_lines():
                    n += line.startswith("data: ")
                    if n == 3:
                        break  # leave mid-stream: the response is closed here
            aborted_before = served.metrics()['tokenleap_request_success_total{finished_reason="abort"}']
            done = await asyncio.gather(*others)
            return aborted_before, done

    before = served.metrics()['tokenleap_request_success_total{finished_reason="abort"}']
    aborted_before, done = asyncio.run(main())
    for r in done:  # the others finish
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 40
    m = served.wait_idle()  # nothing running, no KV block allocated
    assert m['tokenleap_request_success_total{finished_reason="abort"}'] == before + 1
    assert served.engine(_all_blocks_free)
    del aborted_before


# -- errors ---------------------------------------------------------------------------------------------
def _post(served, path, body, key=KEY):
    headers = {"Content-Type": "application/json"}
    if key:  # "" sends no Authorization header
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(served.url + path, content=data, headers=headers, timeout=30)


LONG = "the cat sat on the mat " * 200
ERRORS = [
    ("/v1/completions", '{"model": "tiny", "prompt": ', None, 400, "not valid JSON", None),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "foo": 1}, None, 400, "unknown field 'foo'", "foo"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x", "colour": 1}]},
     None, 400, "unknown field 'messages.0.colour'", "messages.0.colour"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": "hot"}, None, 400, "temperature:",
     "temperature"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": 3}, None, 400,
     "less than or equal to 2", "temperature"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 0}, None, 400, "max_tokens", "max_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, None, 400,
     "messages.0.role", "messages.0.role"),
    ("/v1/completions", {"model": "tiny"}, None, 400, "prompt is required", "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "logit_bias": {"five": 1.0}}, None, 400,
     "logit_bias keys must be token ids", "logit_bias"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "response_format": {"type": "xml"}}, None, 400,
     "response_format.type='xml' is not one of", "response_format.type"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "logprobs": 25}, None, 400, "logprobs", "logprobs"),
    ("/v1/completions", {"model": "tiny", "prompt": [[5, 99999]]}, None, 400, "outside the vocabulary", "prompt"),
    ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES[0], "top_logprobs": 2}, None, 400,
     "top_logprobs needs logprobs=true", "top_logprobs"),
    ("/v1/completions", {"model": "tiny", "prompt": "x"}, "", 401, "API key", None),
    ("/v1/completions", {"model": "tiny", "prompt": "x"}, "wrong", 401, "API key", None),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, None, 404, "The model `gpt-4` does not exist", "model"),
    ("/v1/completions", {"model": "tiny", "prompt": LONG}, None, 400, "maximum context length is 512 tokens",
     "prompt"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": LONG}]}, None, 400,
     "maximum context length is 512 tokens", "messages"),
    ("/v1/nothing", {}, None, 404, "Not Found", None),
]


@pytest.mark.parametrize("path,body,key,status,message,param", ERRORS,
                         ids=[f"{i}-{e[3]}-{e[4][:20]}" for i, e in enumerate(ERRORS)])
def test_errors_are_openai_shaped(served, path, body, key, status, message, param):
    resp = _post(served, path, body, key=KEY if key is None else key)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert message in err["message"], err
    assert err["param"] == param
    assert set(err) == {"message", "type", "param", "code"}


def test_errors_through_the_openai_client_and_still_healthy(served):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        served.client.chat.completions.create(model="nope", messages=MESSAGES[0])
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        served.client.completions.create(model="tiny", prompt=LONG)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="bad", max_retries=0).models.list()
    assert httpx.get(served.url + "/health").status_code == 200
    resp = served.client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=4, temperature=0)
    assert resp.usage.completion_tokens == 4  # still serving
    served.wait_idle()


def test_models_and_metrics(served):
    models = served.client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    served.client.completions.create(model="tiny", prompt=PROMPTS[3] * 3, max_tokens=30, temperature=0)
    text = httpx.get(served.url + "/metrics").text
    for name in ("tokenleap_generation_tokens_total", "tokenleap_kv_cache_usage_perc",
                 "tokenleap_num_requests_running", "tokenleap_num_requests_waiting",
                 "tokenleap_spec_decode_num_draft_tokens_total", "tokenleap_time_to_first_token_seconds_bucket",
                 "tokenleap_e2e_request_latency_seconds_count",
                 'tokenleap_server_request_latency_seconds_count{endpoint="completions"}'):
        assert name in text, name
    if served.aio.speculative_config is not None:
        assert 'tokenleap_spec_decode_num_accepted_tokens_per_pos_total{position="0"}' in text


@pytest.mark.parametrize("spec", [None, {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}],
                         ids=["plain", "ngram"])
def test_smollm2_chat_equals_offline(smollm2_llm_factory, torch_one_thread, spec):
    """The real model's chat template through the server: greedy text equal to LLM.chat, with and without
    n-gram speculation (a code edit, where drafts are accepted)."""
    llm = smollm2_llm_factory(speculative_config=spec)
    msgs = [{"role": "user", "content": "Rename `x` to `total`. Reply with the code only.\n\n"
                                        "def f(items):\n    x = 0\n    for i in items:\n        x += i\n    return x\n"}]
    ref = llm.chat(msgs, _greedy(32), use_tqdm=False)[0]
    s = _serve(llm, names=("smollm2",))
    try:
        resp = s.client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=32, temperature=0)
        assert resp.choices[0].message.content == ref.outputs[0].text
        assert len(ref.outputs[0].text) > 20
        if spec is not None:
            assert resp.model_extra["spec_decode"]["num_accepted_tokens"] > 0
            assert resp.model_extra["spec_decode"] == pytest.approx(ref.metrics.spec_decode.to_dict())
    finally:
        _stop(s)


def test_non_streaming_client_that_leaves_is_aborted(served):
    before = served.metrics()['tokenleap_request_success_total{finished_reason="abort"}']
    body = dict(model="tiny", prompt=PROMPTS[0] * 4, max_tokens=450, temperature=0, ignore_eos=True)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(served.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=httpx.Timeout(30, read=0.3))
    m = served.wait_idle()
    assert m['tokenleap_request_success_total{finished_reason="abort"}'] == before + 1
    assert m["tokenleap_generation_tokens_total"] > 0


def test_engine_failure_gives_503_and_unhealthy(tiny_checkpoint, torch_one_thread):
    llm = LLM(model=str(tiny_checkpoint("llama")), disable_log_stats=True, kv_cache_memory_bytes=8 << 20)
    s = _serve(llm)
    try:
        real_step, calls = s.aio.engine.step, []

        def broken_step():
            calls.append(1)
            if len(calls) >= 4:
                raise RuntimeError("device lost")
            return real_step()

        s.aio.engine.step = broken_step
        stream = s.client.completions.create(model="tiny", prompt="hi", max_tokens=40, stream=True)
        with pytest.raises(openai.APIError, match="device lost"):  # mid-stream: an error event ends the stream
            for _ in stream:
                pass
        resp = httpx.get(s.url + "/health")
        assert resp.status_code == 503 and "device lost" in resp.json()["error"]["message"]
        after = _post(s, "/v1/completions", {"model": "tiny", "prompt": "hi"})  # later requests fail at once
        assert after.status_code == 503 and after.json()["error"]["code"] == "engine_dead"
        with pytest.raises(openai.InternalServerError, match="engine loop has stopped"):
            s.client.completions.create(model="tiny", prompt="hi", max_tokens=4, stream=True)
    finally:
        _stop(s)


@pytest.mark.parametrize("choices", [
    [{"index": 0, "delta": {"content": "héllo \"world\"\n✓"}, "logprobs": None, "finish_reason": None}],
    [{"index": 1, "text": "", "logprobs": {"tokens": ["a"]}, "finish_reason": "stop"}, {"index": 2, "text": "b"}],
    [],
])
def test_chunk_encoder_equals_encoding_the_whole_chunk(choices):
    from tokenleap.server import responses as R

    head = {"id": "chatcmpl-1", "created": 7, "model": "m/ü", "object": "chat.completion.chunk"}
    got = R.ChunkEncoder(head)(choices)
    assert got == R.sse({**head, "choices": choices})
    assert json.loads(got.decode()[len("data: "):]) == {**head, "choices": choices}
