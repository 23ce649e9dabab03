"""Host time of an engine step by phase (wall clock, no profiler): where a step's time goes between the GPU's
work. Batch 1, greedy, the model's answers to module-editing prompts (stopping at EOS).

    python tests/benchmarks/step_phases.py --model PATH_OR_ALIAS [--speculative-config JSON]

Each phase is timed by wrapping the engine's own callables; "wait" is the time the host blocks on the GPU
(the step's one sync), so with a busy host it shrinks and with an idle host it grows.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch
from tokenleap import LLM, SamplingParams
from tokenleap.bench.prompts import module_editing_prompts
from tokenleap.engine import engine as engine_module
from tokenleap.engine import model_runner


def timed(totals: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--speculative-config", type=json.loads, default=None)
    ap.add_argument("--num-prompts", type=int, default=5)
    args = ap.parse_args()
    llm = LLM(model=args.model, max_num_seqs=1, disable_log_stats=True, speculative_config=args.speculative_config)
    chats = [[{"role": "user", "content": p}] for p in module_editing_prompts()[: args.num_prompts]]
    sp = SamplingParams(temperature=0, max_tokens=512)
    for _ in range(2):  # warm-up: cold, then warm prefix cache (its short prefills are other kernel variants)
        llm.chat(chats, sp, use_tqdm=False)
    eng = llm.engine
    totals: dict[str, float] = defaultdict(float)
    eng.scheduler.schedule = timed(totals, "schedule", eng.scheduler.schedule)
    eng.runner.launch = timed(totals, "launch (inputs + graph launch)", eng.runner.launch)
    eng.blocks.cache_full_blocks = timed(totals, "  cache_full_blocks", eng.blocks.cache_full_blocks)
    if eng.driver is not None:
        eng.driver.propose = timed(totals, "  propose", eng.driver.propose)
        eng.driver.verified = timed(totals, "  proposer.on_verified", eng.driver.verified)
    eng._apply = timed(totals, "apply (all below)", eng._apply)
    engine_module.append_tokens = timed(totals, "  append_tokens (detokenize, stops)", engine_module.append_tokens)
    wait = model_runner.LaunchedStep.wait
    model_runner.LaunchedStep.wait = timed(totals, "wait (GPU sync + read back)", wait)
    step = eng.step
    eng.step = timed(totals, "whole step", step)
    steps0, t0 = eng.counters.num_steps, time.perf_counter()
    outs = llm.chat(chats, sp, use_tqdm=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    steps = eng.counters.num_steps - steps0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    model_runner.LaunchedStep.wait = wait
    print(f"{steps} steps, {tokens} tokens ({tokens / steps:.2f} per step), {wall / steps * 1e6:.0f} us per step "
          f"wall, {tokens / wall:.0f} tokens/s")
    for name, secs in totals.items():
        print(f"  {name:<40} {secs / steps * 1e6:8.1f} us per step")


if __name__ == "__main__":
    main()
