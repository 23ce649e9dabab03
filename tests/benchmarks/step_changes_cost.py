"""Host cost in the engine process of one step's changes for 64 streams, each growing by one token a step: made
one whole ``StreamDelta`` per request (``stream_delta``, the first design) against flat columns (``collect_step``),
each then pickled as the pipe would (CPU only; median over 128 steps, microseconds).

    python tests/benchmarks/step_changes_cost.py [--streams 64] [--steps 128]
"""

from __future__ import annotations

import argparse
import statistics
import time
from multiprocessing.reduction import ForkingPickler

from tokenleap.engine.request import Request, RequestStatus
from tokenleap.engine_core.deltas import Sent, collect_step, stream_delta
from tokenleap.sampling_params import SamplingParams


def requests(n: int) -> list[Request]:
    sp = SamplingParams(temperature=0, max_tokens=1024)
    out = [Request(request_id=f"chatcmpl-{i:032x}", prompt_token_ids=list(range(300)), params=sp, seed=0, stream=0,
                   max_tokens=1024, eos_token_ids=frozenset()) for i in range(n)]
    for r in out:
        r.status = RequestStatus.RUNNING
    return out


def run(streams: int, steps: int, columns: bool) -> float:
    reqs = requests(streams)
    entries = [(i, r, Sent()) for i, r in enumerate(reqs)]
    times = []
    for step in range(steps):
        for r in reqs:
            r.output_token_ids.append(step)
            r.text += f" tok{step}"
        t0 = time.perf_counter()
        if columns:
            payload = collect_step(entries)
        else:
            payload = [d for h, r, s in entries if (d := stream_delta(h, r, s)) is not None]
        ForkingPickler.dumps(("steps", [payload]))
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1e6  # (the first step of each request is a whole delta either way)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--steps", type=int, default=128)
    args = ap.parse_args()
    whole, cols = run(args.streams, args.steps, False), run(args.streams, args.steps, True)
    print(f"{args.streams} streams: whole deltas {whole:.0f} us a step, columns {cols:.0f} us ({whole / cols:.1f}x)")


if __name__ == "__main__":
    main()
