"""Step time of fixed-draft verify steps (SmolLM2 shape) with the step's sync as event.synchronize() or as a
Python loop polling event.query() (scratch diagnostic)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tokenleap import SamplingParams

sys.path.insert(0, str(Path(__file__).parent))
from gpu_compare import SMOLLM2_SHAPE, fixed_manager, shape_llm  # noqa: E402


def main() -> None:
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    kw = dict(max_num_seqs=1, disable_log_stats=True)
    if k:
        kw.update(proposer_manager=fixed_manager(), speculative_config={"method": "fixed", "num_speculative_tokens": k})
    llm = shape_llm(SMOLLM2_SHAPE, "smollm2-shape", max_model_len=8192, **kw)
    prompts = [{"prompt_token_ids": list(range(1000, 1128))}]
    sp = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
    llm.generate(prompts, sp, use_tqdm=False)
    sync = torch.cuda.Event.synchronize

    def poll(event):
        while not event.query():
            pass

    for _ in range(3):
        for name, fn in (("synchronize", sync), ("poll", poll)):
            torch.cuda.Event.synchronize = fn
            torch.cuda.synchronize()
            s0, t0 = llm.engine.counters.num_steps, time.perf_counter()
            llm.generate(prompts, sp, use_tqdm=False)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            print(f"k={k} {name:<12} {dt / (llm.engine.counters.num_steps - s0) * 1e6:7.1f} us per step")
    torch.cuda.Event.synchronize = sync


if __name__ == "__main__":
    main()
