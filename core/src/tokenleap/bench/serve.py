"""Serving benchmark (``tokenleap bench serve``), as ``vllm bench serve`` measures it: streaming requests to an
OpenAI-compatible server at given concurrency levels and request rates.

Per request: TTFT = request sent -> first chunk with text; ITL = the gaps between successive chunks with text
(one chunk may carry several tokens when speculation accepts drafts); TPOT = (end - first chunk) / (output
tokens - 1); output tokens from the stream's usage. Per run: output tokens/s = all output tokens / wall time of
the run; percentiles p50 / p90 / p99 over all requests (ITL: over all gaps). Arrivals: at ``request_rate`` per
second (Poisson, seeded), all at once for ``inf``; at most ``concurrency`` requests in flight.

The client is aiohttp on uvloop: it parses every streamed chunk, and at concurrency 64 against SmolLM2 on an H100
the server streams about 27,000 chunks a second, near what httpx's streaming read managed against a server that
streams instantly (12,000-32,000 chunks a second on a 2-core machine shared with that server, where aiohttp read
27,000-48,000: ``tests/benchmarks/sse_client_rate.py``, three runs); the benchmark must not measure its own
client.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from tokenleap.bench import AcceptanceStats, percentile

PERCENTILES = (50, 90, 99)


def run_client(coro: Any) -> Any:
    """Run the benchmark client's coroutine on uvloop when it is installed (the serve extra has it): the client
    parses every streamed chunk, and a slow client would be measured instead of the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


@dataclass
class RequestRecord:
    ok: bool
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    spec_decode: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class ServeRunResult:
    label: str
    concurrency: int
    request_rate: float  # requests per second; inf: all at once
    num_requests: int
    num_failed: int
    duration_s: float
    request_throughput: float
    output_tokens_per_s: float
    total_output_tokens: int
    total_prompt_tokens: int
    total_text_chunks: int  # stream events that carried text (one per token at --stream-interval 1, fewer if coalesced)
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    tpot_ms: dict[str, float]
    e2e_ms: dict[str, float]
    acceptance: dict[str, Any] | None
    errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["request_rate"] = None if self.request_rate == float("inf") else self.request_rate
        return d


def _pcts(values: list[float]) -> dict[str, float]:
    out = {f"p{q}": percentile(values, q) * 1e3 for q in PERCENTILES}
    out["mean"] = sum(values) / len(values) * 1e3 if values else float("nan")
    return out


def request_body(prompt: Any, model: str, endpoint: str, output_len: int, *, temperature: float,
                 ignore_eos: bool) -> dict[str, Any]:
    """The JSON body of one streaming request; ``prompt`` is text or a list of token ids."""
    body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True},
                            "max_tokens": output_len, "temperature": temperature, "ignore_eos": ignore_eos}
    if endpoint == "chat":
        if not isinstance(prompt, str):
            raise ValueError("the chat endpoint needs text prompts; use a text data set or the completions endpoint")
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


async def send_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
                       ) -> RequestRecord:
    rec = RequestRecord(ok=False)
    start = time.perf_counter()
    last = None
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {(await resp.text(errors='replace'))[:300]}"
                return rec
            async for raw in resp.content:  # one line of the event stream at a time
                if not raw.startswith(b"data: "):
                    continue
                data = raw[len(b"data: "):].rstrip(b"\r\n")
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    rec.error = chunk["error"].get("message", str(chunk["error"]))
                    return rec
                if chunk.get("usage"):
                    rec.output_tokens = chunk["usage"]["completion_tokens"]
                    rec.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    rec.spec_decode = chunk.get("spec_decode")
                for choice in chunk.get("choices", []):
                    text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                    if text:
                        now = time.perf_counter()
                        if last is None:
                            rec.ttft_s = now - start
                        else:
                            rec.itl_s.append(now - last)
                        last = now
    except (aiohttp.ClientError, json.JSONDecodeError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
        return rec
    rec.e2e_s = time.perf_counter() - start
    rec.ok = last is not None
    if not rec.ok:
        rec.error = "the stream ended without text"
    return rec


async def run_level(base_url: str, model: str, prompts: list[Any], *, concurrency: int, request_rate: float,
                    output_len: int, endpoint: str = "completions", temperature: float = 0.0,
                    ignore_eos: bool = True, api_key: str | None = None, seed: int = 0,
                    label: str = "") -> ServeRunResult:
    """Send every prompt once at this concurrency / rate and measure."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not request_rate > 0:
        raise ValueError(f"request_rate must be > 0 (inf: all at once), got {request_rate}")
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    bodies = [request_body(p, model, endpoint, output_len, temperature=temperature, ignore_eos=ignore_eos)
              for p in prompts]
    gate = asyncio.Semaphore(concurrency)
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(base_url=base_url, connector=connector, timeout=timeout) as session:

        async def one(body: dict[str, Any]) -> RequestRecord:
            async with gate:
                return await send_request(session, path, body, headers)

        start = time.perf_counter()
        tasks = []
        for body in bodies:
            tasks.append(asyncio.ensure_future(one(body)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        records = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarize(records, label, concurrency, request_rate, duration)


def summarize(records: list[RequestRecord], label: str, concurrency: int, request_rate: float,
              duration: float) -> ServeRunResult:
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    acc = None
    specs = [r.spec_decode for r in ok if r.spec_decode is not None]
    if specs:
        total = AcceptanceStats()
        for s in specs:
            total.num_drafts += s["num_drafts"]
            total.num_draft_tokens += s["num_draft_tokens"]
            total.num_accepted_tokens += s["num_accepted_tokens"]
            per = total.num_accepted_tokens_per_pos
            per.extend([0] * (len(s["num_accepted_tokens_per_pos"]) - len(per)))
            for i, c in enumerate(s["num_accepted_tokens_per_pos"]):
                per[i] += c
        acc = total.to_dict()
    return ServeRunResult(
        label=label, concurrency=concurrency, request_rate=request_rate, num_requests=len(records),
        num_failed=len(records) - len(ok), duration_s=duration,
        request_throughput=len(ok) / duration if duration > 0 else float("nan"),
        output_tokens_per_s=out_tokens / duration if duration > 0 else float("nan"),
        total_output_tokens=out_tokens, total_prompt_tokens=sum(r.prompt_tokens for r in ok),
        total_text_chunks=sum(len(r.itl_s) + 1 for r in ok if r.output_tokens),
        ttft_ms=_pcts([r.ttft_s for r in ok]), itl_ms=_pcts([g for r in ok for g in r.itl_s]),
        tpot_ms=_pcts(tpot), e2e_ms=_pcts([r.e2e_s for r in ok]), acceptance=acc,
        errors=sorted({r.error for r in records if r.error})[:5],
    )


async def server_info(base_url: str, api_key: str | None = None) -> dict[str, Any]:
    """The first model of ``/v1/models`` (id, max_model_len, vocab_size, speculative_config)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession(base_url=base_url, timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get("/v1/models", headers=headers) as resp:
            resp.raise_for_status()
            return (await resp.json())["data"][0]


def compare(plain: list[dict[str, Any]], spec: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speculative / plain ratios of each (concurrency, rate) run both have."""
    key = lambda r: (r["concurrency"], r["request_rate"])  # noqa: E731
    by_key = {key(r): r for r in plain}
    rows = []
    for s in spec:
        p = by_key.get(key(s))
        if p is None:
            continue

        def ratio(a: float, b: float) -> float | None:
            return a / b if b and a == a and b == b else None

        rows.append({"concurrency": s["concurrency"], "request_rate": s["request_rate"],
                     "output_tokens_per_s_ratio": ratio(s["output_tokens_per_s"], p["output_tokens_per_s"]),
                     "itl_p50_ratio": ratio(s["itl_ms"]["p50"], p["itl_ms"]["p50"]),
                     "tpot_p50_ratio": ratio(s["tpot_ms"]["p50"], p["tpot_ms"]["p50"])})
    return rows
