"""GPU kernels of one eager decode step, by total CUDA time (torch.profiler), on the given model.

    python tests/benchmarks/profile_kernels.py --model PATH_OR_ALIAS [--steps 20]

Eager, so every kernel shows up separately; the counts per step are what a captured graph replays.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tokenleap import LLM, SamplingParams
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from gpu_compare import llama3_8b_shape_llm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--llama3-8b-shape", action="store_true", help="random bf16 weights of the Llama-3-8B shape")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    kw = dict(max_num_seqs=1, enforce_eager=True, disable_log_stats=True)
    if args.llama3_8b_shape:
        llm = llama3_8b_shape_llm(**kw)
    else:
        llm = LLM(model=args.model, **kw)
    prompt = [{"prompt_token_ids": list(range(100, 400))}]
    llm.generate(prompt, SamplingParams(temperature=0, max_tokens=args.steps + 2, ignore_eos=True), use_tqdm=False)
    eng = llm.engine
    from tokenleap.engine.request import Request
    from tokenleap.sampling_params import SamplingParams as SP

    req = Request("p", list(range(100, 400)), SP(temperature=0, max_tokens=10_000, ignore_eos=True), 0, 0, 10_000,
                  frozenset())
    eng.add_request(req)
    eng.step()  # prefill
    for _ in range(3):
        eng.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            eng.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    n = sum(e.count for e in events)
    print(f"{n / args.steps:.0f} kernels per decode step, "
          f"{sum(e.device_time_total for e in events) / args.steps / 1e3:.3f} ms GPU time per step")
    for e in sorted(events, key=lambda e: -e.device_time_total):
        print(f"  {e.count / args.steps:6.1f} per step  {e.device_time_total / e.count:8.2f} us each  {e.key[:90]}")


if __name__ == "__main__":
    main()
