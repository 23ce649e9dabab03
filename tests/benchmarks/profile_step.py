"""Where an engine step's host time goes: cProfile over a batch-1 greedy chat on the given model.

    python tests/benchmarks/profile_step.py --model smollm2-135m-instruct [--ngram] [--max-tokens 256]

Prints the steps taken, wall time per step, and the functions with the most own / cumulative time. On CUDA
the wait for the GPU shows up in the one host sync per step (``tolist``).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch
from tokenleap import LLM, SamplingParams
from tokenleap.bench.prompts import code_editing_prompts

sys.path.insert(0, str(Path(__file__).parent))
from gpu_compare import fixed_manager, llama3_8b_shape_llm  # noqa: E402

NGRAM = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--llama3-8b-shape", action="store_true", help="random bf16 weights of the Llama-3-8B shape")
    ap.add_argument("--ngram", action="store_true")
    ap.add_argument("--fixed-drafts", type=int, default=0, help="verify K (rejected) drafts every step")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    spec, mgr = (NGRAM, None) if args.ngram else (None, None)
    if args.fixed_drafts:
        spec, mgr = {"method": "fixed", "num_speculative_tokens": args.fixed_drafts}, fixed_manager()
    kw = dict(max_num_seqs=1, disable_log_stats=True, speculative_config=spec, proposer_manager=mgr)
    if args.llama3_8b_shape:
        llm = llama3_8b_shape_llm(**kw)
        prompts = [{"prompt_token_ids": list(range(1000, 1128))}]
    else:
        llm = LLM(model=args.model, **kw)
        prompts = [llm.get_tokenizer().apply_chat_template(
            [{"role": "user", "content": code_editing_prompts()[0]}], add_generation_prompt=True, tokenize=False)]
    sp = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    for _ in range(2):
        llm.generate(prompts, sp, use_tqdm=False)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    steps0, t0 = llm.engine.counters.num_steps, time.perf_counter()
    llm.generate(prompts, sp, use_tqdm=False)
    sync()
    wall, steps = time.perf_counter() - t0, llm.engine.counters.num_steps - steps0
    print(f"unprofiled: {steps} steps, {wall * 1e3 / steps:.3f} ms/step, {args.max_tokens / wall:.1f} tokens/s")
    prof = cProfile.Profile()
    prof.enable()
    llm.generate(prompts, sp, use_tqdm=False)
    sync()
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
