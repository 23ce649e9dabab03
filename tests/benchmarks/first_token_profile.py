"""Where a 1-token request's time goes (host-side wall time of the engine's calls), plain and with ngram.

    python tests/benchmarks/first_token_profile.py --model PATH.gguf [--cprofile]

The chats are the summarization and code-editing prompts, each first run twice (warm prefix cache, every kernel
compiled), then timed one at a time with ``max_tokens=1``. Each line is the mean time per request spent inside
that call (nested calls included: a call's time contains the ones it makes). ``--cprofile`` also prints the
functions with the most own time.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import pstats
import sys
import time
from pathlib import Path

import torch
from tokenleap import LLM, SamplingParams
from tokenleap.bench.prompts import code_editing_prompts, summarization_prompts
from tokenleap.engine import engine as engine_mod
from tokenleap.engine import model_runner

sys.path.insert(0, str(Path(__file__).parent))
from step_phases import timed  # noqa: E402

NGRAM = {"method": "ngram", "num_speculative_tokens": 15, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
TIMED = [(LLM, "chat"), (LLM, "generate"), (LLM, "_run"), (LLM, "_output"), (engine_mod.Engine, "add_request"),
         (engine_mod.Engine, "step"), (engine_mod.Engine, "_apply"), (engine_mod.Engine, "_schedule_and_launch"),
         (model_runner.ModelRunner, "launch"), (model_runner.ModelRunner, "_prefill_graph"),
         (model_runner.ModelRunner, "_sample"), (model_runner.LaunchedStep, "wait")]


def timing(owner, name: str, label: str, totals: dict[str, float]) -> None:
    """Replace ``owner.name`` by a wrapper adding its wall time to ``totals[label]``."""
    setattr(owner, name, functools.wraps(getattr(owner, name))(timed(totals, label, getattr(owner, name))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cprofile", action="store_true", help="also print the top functions by own time")
    args = ap.parse_args()
    totals: dict[str, float] = collections.defaultdict(float)
    for owner, name in TIMED:
        timing(owner, name, f"{owner.__name__}.{name}", totals)
    chats = [[{"role": "user", "content": p}] for p in summarization_prompts() + code_editing_prompts()]
    one = SamplingParams(temperature=0, max_tokens=1)
    for spec in (None, NGRAM):
        llm = LLM(model=args.model, max_num_seqs=1, disable_log_stats=True, speculative_config=spec)
        tok = llm.get_tokenizer()
        timing(tok, "apply_chat_template", "tokenizer.apply_chat_template", totals)
        timing(tok, "decode", "tokenizer.decode", totals)
        for _ in range(2):
            llm.chat(chats, SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
        for chat in chats:
            llm.chat([chat], one, use_tqdm=False)
        totals.clear()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        for chat in chats:
            llm.chat([chat], one, use_tqdm=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / len(chats)
        print(f"{'ngram' if spec else 'plain'}: 1-token chat {wall * 1e3:.3f} ms per request, of which")
        for label, secs in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {label:34s} {secs / len(chats) * 1e3:7.3f} ms")
        if args.cprofile:
            prof = cProfile.Profile()
            prof.enable()
            for chat in chats:
                llm.chat([chat], one, use_tqdm=False)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        del llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
