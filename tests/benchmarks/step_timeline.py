"""GPU timeline of steady-state engine steps (torch.profiler, CUDA activity): where the GPU idles.

    python tests/benchmarks/step_timeline.py --model PATH_OR_ALIAS [--fixed-drafts K] [--steps 30]
    python tests/benchmarks/step_timeline.py --llama3-8b-shape [--fixed-drafts K]
    python tests/benchmarks/step_timeline.py --smollm2-shape [--fixed-drafts K]

Prints wall time per step, GPU busy time per step (union of kernel / copy intervals), the idle time between
them, and the largest idle gaps with the GPU activity on each side. Kernels replayed from CUDA graphs are
reported by CUPTI like any other.
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
from gpu_compare import SMOLLM2_SHAPE, fixed_manager, llama3_8b_shape_llm, shape_llm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--llama3-8b-shape", action="store_true")
    ap.add_argument("--smollm2-shape", action="store_true")
    ap.add_argument("--fixed-drafts", type=int, default=0, help="verify K drafts every step (0: plain decode)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-async", action="store_true")
    args = ap.parse_args()
    kw = dict(max_num_seqs=1, disable_log_stats=True, async_scheduling=not args.no_async)
    if args.fixed_drafts:
        kw.update(speculative_config={"method": "fixed", "num_speculative_tokens": args.fixed_drafts},
                  proposer_manager=fixed_manager())
    if args.llama3_8b_shape:
        llm = llama3_8b_shape_llm(**kw)
    elif args.smollm2_shape:
        llm = shape_llm(SMOLLM2_SHAPE, "smollm2-shape", max_model_len=8192, **kw)
    else:
        llm = LLM(model=args.model, **kw)
    prompt = [{"prompt_token_ids": list(range(1000, 1128))}]
    n = args.steps
    for _ in range(2):
        llm.generate(prompt, SamplingParams(temperature=0, max_tokens=n + 10, ignore_eos=True), use_tqdm=False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        llm.generate(prompt, SamplingParams(temperature=0, max_tokens=n + 10, ignore_eos=True), use_tqdm=False)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = sorted((e for e in prof.events() if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
    # steady state: drop the prefill and the first / last few steps
    spans = [(e.time_range.start, e.time_range.end, e.name) for e in events]
    lo, hi = spans[len(spans) // 5][0], spans[len(spans) * 4 // 5][0]
    spans = [s for s in spans if lo <= s[0] < hi]
    busy, gaps, end = 0.0, [], spans[0][0]
    for i, (s, e, name) in enumerate(spans):
        if s > end:
            gaps.append((s - end, spans[i - 1][2] if i else "", name))
        busy += max(0.0, e - max(s, end))
        end = max(end, e)
    total = end - spans[0][0]
    steps_in_window = total / (wall * 1e6 / (n + 10))
    print(f"wall {wall * 1e3 / (n + 10):.3f} ms per step (incl. prefill), window {total / 1e3:.2f} ms, "
          f"GPU busy {busy / total:.1%}, idle {(total - busy) / max(steps_in_window, 1e-9):.1f} us per step")
    print(f"activities per step ~{len(spans) / max(steps_in_window, 1e-9):.0f}")
    gaps.sort(reverse=True)
    for g, before, after in gaps[:12]:
        print(f"  gap {g:8.1f} us  after {before[:60]!r}  before {after[:60]!r}")
    big = [g for g, _, _ in gaps if g > 20]
    print(f"gaps > 20 us: {len(big)} totalling {sum(big) / 1e3:.2f} ms; gaps <= 20 us: "
          f"{sum(g for g, _, _ in gaps if g <= 20) / 1e3:.2f} ms")


if __name__ == "__main__":
    main()
