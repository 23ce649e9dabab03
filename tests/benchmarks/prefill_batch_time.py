"""How long the step that admits N requests at once lasts (the engine trace of issue 17 showed 20-120 ms steps
when tens of requests join a running server), offline, one process:

    python tests/benchmarks/prefill_batch_time.py [--model smollm2-135m-instruct] [--counts 2,15,48,64]
        [--rounds 3] [--profile-count 15]

Each round generates one token for N fresh prompts (random token ids of 80-140 tokens: no prefix-cache hits),
for each N of --counts in turn, and prints the wall time and the engine steps it took; then one more admission of
--profile-count prompts runs under torch.profiler and its top operators by host and by device time are printed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch
from tokenleap import LLM, SamplingParams
from torch.profiler import ProfilerActivity, profile


def fresh_prompts(rng: random.Random, n: int) -> list[dict]:
    return [{"prompt_token_ids": [rng.randrange(100, 40000) for _ in range(rng.randrange(80, 141))]}
            for _ in range(n)]


def admit(llm: LLM, prompts: list[dict], params: SamplingParams) -> tuple[float, int]:
    steps0 = llm.engine.counters.num_steps
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, llm.engine.counters.num_steps - steps0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--counts", default="2,15,48,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile-count", type=int, default=15)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    counts = [int(c) for c in a.counts.split(",")]
    llm = LLM(model=a.model, max_num_seqs=max(counts + [a.profile_count]), disable_log_stats=True)
    params = SamplingParams(temperature=0, max_tokens=1)
    rng = random.Random(0)
    admit(llm, fresh_prompts(rng, 1), params)  # warm-up
    for r in range(a.rounds):
        for n in counts:
            secs, steps = admit(llm, fresh_prompts(rng, n), params)
            print(f"round {r} N={n:3d}: {secs * 1e3:8.2f} ms, {steps} steps", flush=True)
    prompts = fresh_prompts(rng, a.profile_count)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        secs, steps = admit(llm, prompts, params)
    print(f"profiled N={a.profile_count}: {secs * 1e3:.2f} ms, {steps} steps", flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top, max_name_column_width=60))
    if torch.cuda.is_available():
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=a.top, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
