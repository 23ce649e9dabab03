"""How many streamed chunks a second a Python client reads, httpx against aiohttp (why ``tokenleap bench serve``
uses aiohttp): a Starlette app on uvicorn (uvloop, httptools) streams chat-completion chunks as fast as it can,
64 streams of 128 at once, and each client reads and parses them on uvloop, three rounds each.

    python tests/benchmarks/sse_client_rate.py [--streams 64] [--chunks 128] [--port 8765]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

CHUNK = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": " word"}, "logprobs": None, "finish_reason": None}]}


def app():
    """The instant-streaming server (imported by uvicorn in a subprocess: ``sse_client_rate:app``)."""
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def stream(request):
        n = (await request.json())["max_tokens"]

        async def gen():
            for i in range(n):
                yield "data: " + json.dumps(CHUNK) + "\n\n"
                if i % 4 == 3:
                    await asyncio.sleep(0)
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", stream, methods=["POST"])])


async def read_httpx(url: str, streams: int, chunks: int) -> int:
    import httpx

    async def one(client) -> int:
        k = 0
        async with client.stream("POST", url, json={"max_tokens": chunks}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and line[6:] != "[DONE]":
                    json.loads(line[6:])
                    k += 1
        return k

    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=streams + 4)) as client:
        return sum(await asyncio.gather(*[one(client) for _ in range(streams)]))


async def read_aiohttp(url: str, streams: int, chunks: int) -> int:
    import aiohttp

    async def one(session) -> int:
        k = 0
        async with session.post(url, json={"max_tokens": chunks}) as resp:
            async for raw in resp.content:
                if raw.startswith(b"data: ") and raw[6:].rstrip() != b"[DONE]":
                    json.loads(raw[6:])
                    k += 1
        return k

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=streams + 4)) as session:
        return sum(await asyncio.gather(*[one(session) for _ in range(streams)]))


def main() -> None:
    import uvloop

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=128)
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "sse_client_rate:app", "--port",
                               str(a.port), "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"],
                              cwd=Path(__file__).parent)
    try:
        time.sleep(3)
        url = f"http://127.0.0.1:{a.port}/v1/chat/completions"
        for name, reader in (("httpx", read_httpx), ("aiohttp", read_aiohttp)):
            for rnd in range(3):
                t0 = time.perf_counter()
                n = uvloop.run(reader(url, a.streams, a.chunks))
                dt = time.perf_counter() - t0
                print(f"{name} round {rnd}: {n} chunks in {dt * 1e3:.0f} ms, {n / dt:,.0f} chunks/s", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
