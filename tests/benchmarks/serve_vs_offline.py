"""The serving targets of issue 17 in one run: the server against offline generation of the same requests.

    python tests/benchmarks/serve_vs_offline.py --model smollm2-135m-instruct --dataset code-editing \
        --num-prompts 64 --output-len 128 --output-json serve_vs_offline.json [engine flags ...]

1. Offline (this process, then freed): batch-1 decode time per token (first token -> last, over each prompt
   alone), plain and with --speculative-config; ``generate`` of all prompts at once, plain (output tokens/s).
2. Server (a ``tokenleap serve`` subprocess per config, streaming chat requests): concurrency 1 and 64.
Ratios: c=1 plain server ITL p50 / offline decode ms per token (target <= 1.15); c=1 speculation speedup
(TPOT plain / TPOT spec) over offline's (target within 10%); c=64 plain server tokens/s / offline generate
(>= 0.9); c=64 spec / plain tokens/s (>= 0.98); offline generate and the c=64 level are each the median of
--repeats runs. Engine flags (--kv-cache-memory-bytes, --max-model-len, ...)
go to both. The client runs in this process: on a machine with few cores it competes with the server.
On a loaded CPU machine run it with OMP_NUM_THREADS=1: torch's OpenMP fork/join in the offline part (main thread)
can cost more than the model there (2 threads: 130 ms per token of the tiny test model, 1 thread: 5 ms).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

from tokenleap import LLM, SamplingParams
from tokenleap.bench import prompts as P
from tokenleap.bench.serve import run_client, run_level, server_info
from tokenleap.bench.server_process import ServerProcess
from tokenleap.cli import _ENGINE_FLAGS, _engine_args, _engine_argv

DEFAULT_SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}


def offline(args, spec, prompts: list[str]) -> dict:
    kwargs = {k: getattr(args, k) for k in _ENGINE_FLAGS if getattr(args, k, None) is not None}
    llm = LLM(model=args.model, speculative_config=spec, disable_log_stats=True, **kwargs)
    convs = [[{"role": "user", "content": p}] for p in prompts]
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    llm.chat(convs[:2], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)  # warm-up
    per_token = []
    for conv in convs[: args.num_batch1]:
        out = llm.chat(conv, params, use_tqdm=False)[0]
        m = out.metrics
        per_token.append((m.finished_time - m.first_token_time) / (len(out.outputs[0].token_ids) - 1))
    result = {"batch1_decode_ms_per_token": statistics.median(per_token) * 1e3}
    if spec is None:
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            outs = llm.chat(convs, params, use_tqdm=False)
            wall = time.perf_counter() - t0
            rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / wall)
        result["generate_output_tokens_per_s_runs"] = rates
        result["generate_output_tokens_per_s"] = statistics.median_low(rates)
    del llm
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    return result


def served(args, spec, prompts: list[str]) -> dict:
    serve_args = _engine_argv(args) + (["--speculative-config", json.dumps(spec)] if spec else [])
    serve_args += ["--stream-interval", str(args.stream_interval)]
    if not args.engine_process:
        serve_args.append("--no-engine-process")
    out = {}
    server = ServerProcess(serve_args)
    with server as url:
        info = run_client(server_info(url))
        common = dict(output_len=args.output_len, endpoint="chat", temperature=0.0, ignore_eos=True,
                      request_rate=float("inf"))
        run_client(run_level(url, info["id"], prompts[:2], concurrency=2, **{**common, "output_len": 8}))
        out[1] = run_client(run_level(url, info["id"], prompts[: args.num_batch1], concurrency=1, **common)).to_dict()
        runs = []
        for _ in range(args.repeats):  # (wall-clock start and end: to line up with an engine trace)
            t0, cpu0 = time.time(), server.cpu_seconds()
            runs.append(run_client(run_level(url, info["id"], prompts, concurrency=64, **common)).to_dict())
            cpu1 = server.cpu_seconds()
            runs[-1]["wall_clock"] = [t0, time.time()]
            # CPU time per streamed chunk of the server's process and of the engine process (its child)
            for side in ("server", "children"):
                runs[-1][f"{side}_cpu_us_per_chunk"] = (cpu1[side] - cpu0[side]) / max(
                    runs[-1]["total_text_chunks"], 1) * 1e6
        runs.sort(key=lambda r: r["output_tokens_per_s"])
        out[64] = runs[(len(runs) - 1) // 2]  # the (lower) median run, as offline's median_low
        out["c64_output_tokens_per_s_runs"] = [r["output_tokens_per_s"] for r in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _engine_args(ap)
    ap.add_argument("--dataset", default="code-editing")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--num-batch1", type=int, default=8, help="prompts run one at a time (c=1 / batch 1)")
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--output-json", default=None)
    ap.add_argument("--stream-interval", type=int, default=1, help="the servers' --stream-interval")
    ap.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                    help="the servers' --engine-process (default) or --no-engine-process")
    ap.add_argument("--repeats", type=int, default=3,
                    help="offline generate and the c=64 server level each run this many times (medians)")
    args = ap.parse_args()
    spec = args.speculative_config or DEFAULT_SPEC
    prompts = P.load_prompts(args.dataset, args.num_prompts)
    prompts = (prompts * (args.num_prompts // len(prompts) + 1))[: args.num_prompts]
    off = {"plain": offline(args, None, prompts), "speculative": offline(args, spec, prompts)}
    srv = {"plain": served(args, None, prompts), "speculative": served(args, spec, prompts)}
    sp, ss, op, os_ = srv["plain"], srv["speculative"], off["plain"], off["speculative"]
    offline_speedup = op["batch1_decode_ms_per_token"] / os_["batch1_decode_ms_per_token"]
    server_speedup = sp[1]["tpot_ms"]["p50"] / ss[1]["tpot_ms"]["p50"]
    ratios = {
        "c1_plain_itl_p50_over_offline_decode": sp[1]["itl_ms"]["p50"] / op["batch1_decode_ms_per_token"],
        "c1_plain_tpot_p50_over_offline_decode": sp[1]["tpot_ms"]["p50"] / op["batch1_decode_ms_per_token"],
        "c1_speculation_speedup_offline": offline_speedup,
        "c1_speculation_speedup_server": server_speedup,
        "c1_speedup_server_over_offline": server_speedup / offline_speedup,
        "c64_plain_server_over_offline_tokens_per_s": sp[64]["output_tokens_per_s"]
        / op["generate_output_tokens_per_s"],
        "c64_spec_over_plain_tokens_per_s": ss[64]["output_tokens_per_s"] / sp[64]["output_tokens_per_s"],
    }
    doc = {"model": args.model, "dataset": args.dataset, "num_prompts": args.num_prompts,
           "stream_interval": args.stream_interval, "engine_process": args.engine_process, "repeats": args.repeats,
           "output_len": args.output_len, "speculative_config": spec, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                          time.gmtime()),
           "offline": off, "server": srv, "ratios": ratios}
    text = json.dumps(doc, indent=2)
    if args.output_json:
        with open(args.output_json, "w") as f:
            f.write(text + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
