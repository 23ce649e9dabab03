"""Host time of an engine step by phase (wall clock, no profiler): where a step's time goes between the GPU's
work. Batch 1, greedy, the model's answers to module-editing prompts (stopping at EOS).

    python tests/benchmarks/step_phases.py --model PATH_OR_ALIAS [--speculative-config JSON]

Steps that ran a prefill (eager) are reported apart from decode / verify steps. Each phase is timed by
wrapping the engine's own callables; "wait" is the time the host blocks on the GPU
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


def timed(current: dict, name: str, fn):
    """``fn`` whose wall time is added to ``current[name]`` (the phases of the step under way)."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            current[name] += time.perf_counter() - t0
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
    current: dict[str, float] = defaultdict(float)  # this step's phases
    buckets = {"decode": defaultdict(float), "prefill": defaultdict(float)}  # steps with / without a prefill
    counts = {"decode": 0, "prefill": 0}
    eng.scheduler.schedule = timed(current, "schedule", eng.scheduler.schedule)
    launch = timed(current, "launch (inputs + graph launch)", eng.runner.launch)

    def launch_noting_prefill(scheduled, *rest, **kw):
        current["_prefill"] += any(s.num_new_tokens > 1 for s in scheduled)
        return launch(scheduled, *rest, **kw)

    eng.runner.launch = launch_noting_prefill
    eng.blocks.cache_full_blocks = timed(current, "  cache_full_blocks", eng.blocks.cache_full_blocks)
    if eng.driver is not None:
        eng.driver.propose = timed(current, "  propose", eng.driver.propose)
        eng.driver.verified = timed(current, "  proposer.on_verified", eng.driver.verified)
    eng._apply = timed(current, "apply (all below)", eng._apply)
    engine_module.append_tokens = timed(current, "  append_tokens (detokenize, stops)", engine_module.append_tokens)
    wait = model_runner.LaunchedStep.wait
    model_runner.LaunchedStep.wait = timed(current, "wait (GPU sync + read back)", wait)
    step = timed(current, "whole step", eng.step)

    def step_by_kind():
        try:
            return step()
        finally:
            kind = "prefill" if current.pop("_prefill", 0) else "decode"
            counts[kind] += 1
            for name, secs in current.items():
                buckets[kind][name] += secs
            current.clear()

    eng.step = step_by_kind
    t0 = time.perf_counter()
    outs = llm.chat(chats, sp, use_tqdm=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    model_runner.LaunchedStep.wait = wait
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    steps = counts["decode"] + counts["prefill"]
    print(f"{steps} steps ({counts['prefill']} with a prefill), {tokens} tokens ({tokens / steps:.2f} per step), "
          f"{wall / steps * 1e6:.0f} us per step wall, {tokens / wall:.0f} tokens/s")
    for kind in ("decode", "prefill"):
        if counts[kind]:
            print(f"  {kind} steps ({counts[kind]}):")
            for name, secs in buckets[kind].items():
                print(f"    {name:<40} {secs / counts[kind] * 1e6:8.1f} us per step")

if __name__ == "__main__":
    main()
