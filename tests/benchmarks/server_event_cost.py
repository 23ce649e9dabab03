"""What the server's process spends per streamed event (issue 17: at 64 concurrent streams the server, not the
engine, paced the clients: ~60 us an event against the engine's 2.2 ms steps). In one process, no HTTP, no engine:
a stand-in engine yields one more token to every running stream per round (``asyncio.sleep(0)`` between rounds),
and ``OpenAIServing._stream`` turns each into SSE bytes, for --streams concurrent chat streams of --tokens tokens.

    python tests/benchmarks/server_event_cost.py [--streams 64] [--tokens 128] [--rounds 3] [--profile]

Prints microseconds per event (wall time of the streams / events), the best of --rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time

from tokenleap.outputs import CompletionOutput, RequestOutput
from tokenleap.server.metrics import ServerMetrics
from tokenleap.server.routes import OpenAIServing


class InstantEngine:
    """An AsyncFrontend stand-in: every request yields ``tokens`` cumulative outputs, one a round."""

    speculative_config = None

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    async def run_request(self, group):
        text, ids = "", []
        for t in range(self.tokens):
            await asyncio.sleep(0)
            text += " word"
            ids.append(1000 + t)
            done = t == self.tokens - 1
            yield RequestOutput(group[0], None, [1, 2, 3], [CompletionOutput(0, text, list(ids), None, None,
                                                                             "length" if done else None)], done)


async def one_round(serving: OpenAIServing, streams: int) -> tuple[float, int]:
    async def consume(i: int) -> int:
        head = {"id": f"chatcmpl-{i}", "created": 0, "model": "m"}
        n = 0
        async for _ in serving._stream(True, head, [[f"r{i}"]], None, 1, False, 0, time.monotonic()):
            n += 1
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(consume(i) for i in range(streams)))
    return time.perf_counter() - t0, sum(counts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args(argv)
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    serving = OpenAIServing(InstantEngine(a.tokens), ["m"], ServerMetrics())
    best = None
    for _ in range(a.rounds):
        secs, events = asyncio.run(one_round(serving, a.streams))
        us = secs / events * 1e6
        best = us if best is None else min(best, us)
        print(f"{events} events in {secs * 1e3:.1f} ms: {us:.2f} us an event", flush=True)
    print(f"best: {best:.2f} us an event")
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(one_round(serving, a.streams))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
