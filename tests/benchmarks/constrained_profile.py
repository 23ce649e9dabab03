"""Where the host's time goes in n-gram speculation under a JSON schema (issue 19), batch 1, SmolLM2:

    python tests/benchmarks/constrained_profile.py [--limit 16] [--top 30] [--out results.json]

Runs constrained_speed's prompts with n-gram (k = 5) unconstrained and under the schema, each timed plainly and
then once more under cProfile (the profile's top functions by own time printed for both), and counts the steps
that verified drafts against those that decoded one token. Meant for the GPU (batch 1 of a 135M model: the host
sets the pace).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
from pathlib import Path

import torch
from constrained_speed import SCHEMA, prompts, run
from tokenleap import LLM, SamplingParams


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    chats = prompts(a.limit)
    kinds = {"unconstrained": SamplingParams(temperature=0, max_tokens=a.max_tokens),
             "json": SamplingParams(temperature=0, max_tokens=a.max_tokens, structured_outputs={"json": SCHEMA})}
    llm = LLM(model=a.model, device=a.device, max_num_seqs=1, disable_log_stats=True,
              speculative_config={"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2,
                                  "prompt_lookup_max": 4})
    res: dict = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "runs": {}}
    for kind, params in kinds.items():
        got = res["runs"][kind] = run(llm, chats, params, a.device)
        del got["ids"], got["texts"]
        print(f"ngram {kind}: {got['tokens_per_s']:.1f} tokens/s, {got['steps']} steps "
              f"({got['verify_steps']} with drafts), {got['us_per_step']:.0f} us a step", flush=True)
        prof = cProfile.Profile()
        under = run(llm, chats, params, a.device, prof)
        got["profiled_tokens_per_s"] = under["tokens_per_s"]
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(a.top)
        got["profile"] = out.getvalue()
        print(f"--- {kind} under cProfile: {under['tokens_per_s']:.1f} tokens/s; top {a.top} by own time", flush=True)
        print("\n".join(line[:160] for line in out.getvalue().splitlines()[6:]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
