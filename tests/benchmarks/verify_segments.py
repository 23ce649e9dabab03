"""Latency of one graphed forward launched on an idle GPU, for several ways of cutting it into segment graphs.

    python tests/benchmarks/verify_segments.py --model PATH_OR_ALIAS [--query-len 9] [--repeats 30]
    python tests/benchmarks/verify_segments.py --shape smollm2|llama3-8b [--query-len 16]   # random weights

A verify step starts on an idle GPU (the proposer needed the previous step's tokens), so what counts is the time
from the first launch to the last kernel's end, host launch cost included: printed as the median over
``repeats`` single launches (host clock, synchronize after each), beside the host time of the launch calls
alone and the back-to-back GPU time per forward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tokenleap.engine.cuda_graphs import DecodeGraphs, equal_bounds, segment_bounds

sys.path.insert(0, str(Path(__file__).parent))
from graph_replay import build, replay_inputs  # noqa: E402


def doubling_bounds(num_layers: int) -> list[int]:
    """1, 2, 4, 8, ... layers (a short tail folded into the segment before it): the engine's verify segments
    before the sixth session."""
    bounds, size = [0], 1
    while bounds[-1] < num_layers:
        bounds.append(min(num_layers, bounds[-1] + size))
        size *= 2
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < (bounds[-2] - bounds[-3]) // 2:
        del bounds[-2]
    return bounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--shape", choices=["smollm2", "llama3-8b"], help="random bf16 weights of this shape instead")
    ap.add_argument("--query-len", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    q = args.query_len
    llm = build(args.model, args.shape, {"method": "ngram", "num_speculative_tokens": q - 1} if q > 1 else None)
    eng = llm.engine
    n = len(eng.model.layers)
    options = {"whole": [0, n], "1,2,4,...": doubling_bounds(n), "3 equal": equal_bounds(n, 3),
               "6 equal": equal_bounds(n, 6), "1 + 2 equal (engine)": segment_bounds(n),
               "2,4,8,...": [0] + doubling_bounds(n)[2:]}
    for name, bounds in options.items():
        graphs = DecodeGraphs(eng.model, eng.runner.kv_caches, 1, [q], eng.runner.max_blocks_per_req,
                              eng.max_model_len, eng.backend, eng.device, decode_bounds=bounds, verify_bounds=bounds)
        graphs.capture()
        latency, host, pipelined = measure(graphs, q, eng.blocks.num_blocks, args.repeats)
        print(f"{name:<12} bounds {bounds}: idle-GPU latency {latency * 1e6:7.1f} us, "
              f"launch calls {host * 1e6:6.1f} us, back to back {pipelined * 1e6:7.1f} us")
        del graphs
        torch.cuda.empty_cache()


def measure(graphs: DecodeGraphs, q: int, num_blocks: int, repeats: int, context: int = 256):
    """(median idle-GPU latency, median host time of the launch calls, back-to-back time per forward), seconds."""
    inputs = replay_inputs(graphs, 1, q, num_blocks, context)

    def launch():
        graphs.run(*inputs)

    for _ in range(5):
        launch()
    torch.cuda.synchronize()
    latency, host = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        launch()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        latency.append(time.perf_counter() - t0)
        host.append(t1 - t0)
    t0 = time.perf_counter()
    for _ in range(repeats):
        launch()
    torch.cuda.synchronize()
    return statistics.median(latency), statistics.median(host), (time.perf_counter() - t0) / repeats


if __name__ == "__main__":
    main()
