"""Host time of an engine step by phase (wall clock, no profiler): where a step's time goes between the GPU's
work. Batch 1, greedy, the model's answers to module-editing prompts (stopping at EOS).

    python tests/benchmarks/step_phases.py --model PATH_OR_ALIAS [--speculative-config JSON]
    python tests/benchmarks/step_phases.py --shape smollm2|llama3-8b --fixed-drafts K   # random weights

With ``--shape`` the prompts are 128 token ids and every answer runs 256 tokens (EOS ignored); with
``--fixed-drafts K`` every step verifies K drafts that cost nothing to propose, so the host time left is the
engine's own.

Steps that ran a prefill (eager) are reported apart from decode / verify steps. Each phase is timed by
wrapping the engine's own callables; "wait" is the time the host blocks on the GPU
(the step's one sync), so with a busy host it shrinks and with an idle host it grows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict

import torch
from tokenleap import LLM, SamplingParams
from tokenleap.bench.prompts import module_editing_prompts
from tokenleap.engine import engine as engine_module
from tokenleap.engine import model_runner

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from gpu_compare import LLAMA3_8B, SMOLLM2_SHAPE, fixed_manager, shape_llm  # noqa: E402


def timed(current: dict, name: str, fn):
    """``fn`` whose wall time is added to ``current[name]`` (the phases of the step under way)."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            current[name] += time.perf_counter() - t0
    return wrapper


def marked(marks: dict, name: str, fn):
    """``fn`` that notes when it is first entered after the step's sync returned (``marks["sync"]``)."""
    def wrapper(*args, **kwargs):
        if "sync" in marks and name not in marks:
            marks[name] = time.perf_counter() - marks["sync"]
        return fn(*args, **kwargs)
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--speculative-config", type=json.loads, default=None)
    ap.add_argument("--num-prompts", type=int, default=5)
    ap.add_argument("--shape", choices=["smollm2", "llama3-8b"], help="random bf16 weights of this shape instead")
    ap.add_argument("--fixed-drafts", type=int, default=0, help="verify K free drafts every step")
    args = ap.parse_args()
    kw = dict(max_num_seqs=1, disable_log_stats=True, speculative_config=args.speculative_config)
    if args.fixed_drafts:
        kw.update(speculative_config={"method": "fixed", "num_speculative_tokens": args.fixed_drafts},
                  proposer_manager=fixed_manager())
    if args.shape is None:
        llm = LLM(model=args.model, **kw)
        chats = [[{"role": "user", "content": p}] for p in module_editing_prompts()[: args.num_prompts]]
        sp = SamplingParams(temperature=0, max_tokens=512)
        run = lambda: llm.chat(chats, sp, use_tqdm=False)  # noqa: E731
    else:
        config, max_len = (SMOLLM2_SHAPE, 8192) if args.shape == "smollm2" else (LLAMA3_8B, 4096)
        llm = shape_llm(config, f"{args.shape}-shape", max_model_len=max_len, **kw)
        prompts = [{"prompt_token_ids": list(range(1000 + i, 1128 + i))} for i in range(args.num_prompts)]
        sp = SamplingParams(temperature=0, max_tokens=256, ignore_eos=True)
        run = lambda: llm.generate(prompts, sp, use_tqdm=False)  # noqa: E731
    for _ in range(2):  # warm-up: cold, then warm prefix cache (its short prefills are other kernel variants)
        run()
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
    if eng.runner.graphs is not None:
        graphs = eng.runner.graphs
        graphs.run = timed(current, "  graphs.run (staging, copy, replays)", graphs.run)
        graphs.read_back = timed(current, "  graphs.read_back", graphs.read_back)
        torch.cuda.CUDAGraph.replay = timed(current, "    graph replays", torch.cuda.CUDAGraph.replay)
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

    # The critical path of a step launched after the sync (verify steps): when each part starts, counted from the
    # moment the step's one sync returned, up to the first graph replay (the GPU starts right after it).
    marks: dict[str, float] = {}
    path: dict[str, list[float]] = defaultdict(list)
    sync = torch.cuda.Event.synchronize if torch.cuda.is_available() else None
    if sync is not None:
        def sync_noted(event):
            sync(event)
            marks.clear()
            marks["sync"] = time.perf_counter()
        torch.cuda.Event.synchronize = sync_noted
        eng._apply = marked(marks, "apply", eng._apply)
        if eng.driver is not None:
            eng.driver.propose = marked(marks, "propose", eng.driver.propose)
        eng.scheduler.schedule = marked(marks, "schedule", eng.scheduler.schedule)
        eng.runner.launch = marked(marks, "launch", eng.runner.launch)
        if eng.runner.graphs is not None:
            eng.runner.graphs.run = marked(marks, "graphs.run", eng.runner.graphs.run)
            torch.cuda.CUDAGraph.replay = marked(marks, "first replay", torch.cuda.CUDAGraph.replay)
    inner = step_by_kind

    def step_with_path():
        try:
            return inner()
        finally:
            if "first replay" in marks:
                for name, t in marks.items():
                    if name != "sync":
                        path[name].append(t)
            marks.clear()

    eng.step = step_with_path
    t0 = time.perf_counter()
    outs = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    model_runner.LaunchedStep.wait = wait
    if sync is not None:
        torch.cuda.Event.synchronize = sync
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    steps = counts["decode"] + counts["prefill"]
    print(f"{steps} steps ({counts['prefill']} with a prefill), {tokens} tokens ({tokens / steps:.2f} per step), "
          f"{wall / steps * 1e6:.0f} us per step wall, {tokens / wall:.0f} tokens/s")
    for kind in ("decode", "prefill"):
        if counts[kind]:
            print(f"  {kind} steps ({counts[kind]}):")
            for name, secs in buckets[kind].items():
                print(f"    {name:<40} {secs / counts[kind] * 1e6:8.1f} us per step")
    if path:
        n = len(path["first replay"])
        print(f"  critical path of the {n} steps launched after their sync (median us after the sync returned):")
        for name, ts in sorted(path.items(), key=lambda kv: statistics.median(kv[1])):
            print(f"    {name:<40} {statistics.median(ts) * 1e6:8.1f} us ({len(ts)} steps)")

if __name__ == "__main__":
    main()
