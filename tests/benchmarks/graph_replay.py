"""GPU time of captured forwards (graph replay, no engine host work), and the kernels one replay runs.

    python tests/benchmarks/graph_replay.py --model PATH_OR_ALIAS [--query-lens 1,6,9] [--kernels]
    python tests/benchmarks/graph_replay.py --shape smollm2 --query-lens 1,2,5,9   # random weights, no files

Imports only ``tokenleap.LLM``, so it also runs against an older checkout (PYTHONPATH=OLD/core/src) for a
same-machine A/B of the forward alone. With ``--shape`` every verify length gets its own engine (an engine
captures 1 and 1 + k only).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tokenleap import LLM
from tokenleap.engine.cuda_graphs import DecodeGraphs


def replay_inputs(graphs: DecodeGraphs, b: int, q: int, num_blocks: int, context: int = 256) -> tuple:
    """``graphs.run`` arguments for ``b`` requests of ``q`` tokens at ``context`` positions: their KV read from
    distinct cache blocks, as in a real step; this step's writes go to the null block, so no cached block
    changes; 1-token steps take their input token on the device (as launched ahead)."""
    mb = graphs.max_blocks
    zeros = np.zeros(b * q, dtype=np.int64)
    tables = (np.arange(b * mb, dtype=np.int32) % (num_blocks - 1) + 1).reshape(b, mb)
    return (b, q, zeros, np.tile(np.arange(context, context + q), b), zeros, np.full(b, q - 1), tables,
            np.full(b, context + q, dtype=np.int32), b if q == 1 else 0)


def graph_replay_ms(llm: LLM, b: int, q: int, n: int = 50, context: int = 256) -> float:
    """GPU time of one captured forward (CUDA events), without the engine's host work: ``replay_inputs``, then
    the forward's segment graphs replayed back to back."""
    graphs = llm.engine.runner.graphs
    graphs.run(*replay_inputs(graphs, b, q, llm.engine.blocks.num_blocks, context))
    segments = graphs.graphs[(b, q)][0]
    for _ in range(5):
        for graph in segments:
            graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        for graph in segments:
            graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def kernel_table(llm: LLM, b: int, q: int, top: int = 25) -> None:
    """Per-kernel GPU time of one replay of the (b, q) forward."""
    from torch.profiler import ProfilerActivity, profile

    graph_replay_ms(llm, b, q, n=3)
    segments = llm.engine.runner.graphs.graphs[(b, q)][0]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for graph in segments:
            graph.replay()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.device_time_total for e in events)
    print(f"(b={b}, q={q}): {sum(e.count for e in events)} kernels, {total / 1e3:.3f} ms summed kernel time")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:top]:
        print(f"  {e.count:5d} x {e.device_time_total / e.count:7.2f} us  {e.key[:100]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--shape", choices=["smollm2", "llama3-8b"], help="random bf16 weights of this shape instead")
    ap.add_argument("--query-lens", default="1,6,9", help="comma list of 1 + k to time (batch 1)")
    ap.add_argument("--kernels", action="store_true", help="also print the kernels of each replay")
    args = ap.parse_args()
    qs = [int(q) for q in args.query_lens.split(",")]
    groups = [qs] if args.shape is None else [[q] for q in qs]  # the query lengths each engine times
    for group in groups:
        k = max(group) - 1
        llm = build(args.model, args.shape, {"method": "ngram", "num_speculative_tokens": k} if k else None)
        for q in group:
            if (1, q) not in llm.engine.runner.graphs.graphs:
                continue  # only 1 and 1 + k are captured
            print(f"forward (b=1, q={q}): {graph_replay_ms(llm, 1, q) * 1e3:.1f} us per replay")
            if args.kernels:
                kernel_table(llm, 1, q)
        del llm
        torch.cuda.empty_cache()


def build(model: str, shape: str | None, spec: dict | None) -> LLM:
    common = dict(max_num_seqs=1, disable_log_stats=True, speculative_config=spec)
    if shape is None:
        return LLM(model=model, **common)
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_compare import LLAMA3_8B, SMOLLM2_SHAPE, shape_llm  # not at the top: gpu_compare imports this file

    config, max_len = (SMOLLM2_SHAPE, 8192) if shape == "smollm2" else (LLAMA3_8B, 4096)
    return shape_llm(config, f"{shape}-shape", max_model_len=max_len, **common)


if __name__ == "__main__":
    main()
