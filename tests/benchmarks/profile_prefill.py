"""Host and GPU time of one eager prefill step (torch.profiler, CPU + CUDA), on a SmolLM2-shaped model with
random weights (``load_format="dummy"``: nothing to download or carry) or a given model.

    python tests/benchmarks/profile_prefill.py [--model PATH_OR_ALIAS] [--prompt-len 150]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tokenleap import LLM, SamplingParams
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from gpu_compare import SMOLLM2_SHAPE, shape_llm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="default: SmolLM2-135M shape with random bf16 weights")
    ap.add_argument("--prompt-len", type=int, default=150)
    args = ap.parse_args()
    if args.model:
        llm = LLM(model=args.model, max_num_seqs=1, disable_log_stats=True)
    else:
        llm = shape_llm(SMOLLM2_SHAPE, "smollm2-shape", max_num_seqs=1, disable_log_stats=True,
                        enable_prefix_caching=False)
    sp = SamplingParams(temperature=0, max_tokens=1)
    prompt = [{"prompt_token_ids": [(37 * i) % 40000 + 100 for i in range(args.prompt_len)]}]
    for _ in range(3):
        llm.generate(prompt, sp, use_tqdm=False)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        llm.generate(prompt, sp, use_tqdm=False)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(f"prefill of {args.prompt_len} tokens + 1 sampled token: min {min(times) * 1e3:.2f} ms, "
          f"max {max(times) * 1e3:.2f} ms over 10")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.generate(prompt, sp, use_tqdm=False)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main()
