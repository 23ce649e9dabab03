"""CPU benchmark: SmolLM2-135M-Instruct (float32), batch 1, greedy, with and without n-gram speculation, on
code-editing and summarization prompts. Not run in CI.

    python tests/benchmarks/bench_spec_cpu.py [--max-tokens 64] [--k 5] [--threads 1] [--json out.json]

Reports per prompt set: generated tokens, wall seconds, tokens/s, and for speculation the mean acceptance
length (1 + accepted / drafts, tokens per target step) and the draft acceptance rate. Both engines share one
copy of the weights (loaded once); each configuration gets a warm-up request first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers.spec_prompts

from helpers.spec_prompts import chat_token_ids, code_prompts, summary_prompts  # noqa: E402
from tokenleap import LLM, SamplingParams  # noqa: E402
from tokenleap.engine import setup  # noqa: E402


def build(base: LLM | None, **kwargs) -> LLM:
    """An LLM; later ones share ``base``'s loaded weights instead of reading the GGUF again."""
    kwargs.update(max_model_len=1024, kv_cache_memory_bytes=64 << 20, max_num_seqs=1, disable_log_stats=True)
    if base is None:
        return LLM("smollm2-135m-instruct", **kwargs)
    eng = base.engine
    loaded = setup.LoadedModel(eng.model, eng.arch, eng.tokenizer, next(eng.model.parameters()).dtype)
    real = setup.load_model
    setup.load_model = lambda *a, **k: loaded
    try:
        return LLM("smollm2-135m-instruct", **kwargs)
    finally:
        setup.load_model = real


def run(llm: LLM, prompts: list[dict], max_tokens: int) -> dict:
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
    before = llm.engine.counters.spec
    d0, t0, a0 = before.num_drafts, before.num_draft_tokens, before.num_accepted_tokens
    steps0 = llm.engine.counters.num_steps
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    s = llm.engine.counters.spec
    drafts, drafted, accepted = s.num_drafts - d0, s.num_draft_tokens - t0, s.num_accepted_tokens - a0
    return {
        "requests": len(prompts),
        "tokens": tokens,
        "seconds": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "engine_steps": llm.engine.counters.num_steps - steps0,
        "mean_acceptance_length": round(1 + accepted / drafts, 3) if drafts else None,
        "draft_acceptance_rate": round(accepted / drafted, 3) if drafted else None,
        "drafts": drafts,
        "draft_tokens": drafted,
        "accepted_tokens": accepted,
        "outputs": [o.outputs[0].token_ids for o in outs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=5, help="num_speculative_tokens")
    ap.add_argument("--lookup-max", type=int, default=3)
    ap.add_argument("--lookup-min", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    plain = build(None)
    spec_cfg = {
        "method": "ngram",
        "num_speculative_tokens": args.k,
        "prompt_lookup_max": args.lookup_max,
        "prompt_lookup_min": args.lookup_min,
    }
    spec = build(plain, speculative_config=spec_cfg)
    tok = plain.get_tokenizer()
    sets = {
        "code_editing": chat_token_ids(tok, code_prompts()),
        "summarization": chat_token_ids(tok, summary_prompts()),
    }
    results = {
        "config": {
            **vars(args),
            "json": str(args.json) if args.json else None,
            "speculative": spec_cfg,
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
        }
    }
    print(
        f"{'prompts':<15}{'mode':<7}{'tokens':>7}{'sec':>8}{'tok/s':>8}{'steps':>7}{'acc.len':>9}{'acc.rate':>9}"
    )
    for name, prompts in sets.items():
        base = run(plain, prompts, args.max_tokens)
        sped = run(spec, prompts, args.max_tokens)
        same = base.pop("outputs") == sped.pop("outputs")
        results[name] = {
            "plain": base,
            "ngram": sped,
            "speedup": round(sped["tokens_per_s"] / base["tokens_per_s"], 3),
            "identical_outputs": same,
        }
        for mode, r in (("plain", base), ("ngram", sped)):
            print(
                f"{name:<15}{mode:<7}{r['tokens']:>7}{r['seconds']:>8}{r['tokens_per_s']:>8}{r['engine_steps']:>7}"
                f"{r['mean_acceptance_length'] or '-':>9}{r['draft_acceptance_rate'] or '-':>9}"
            )
        print(f"{name:<15}speedup x{results[name]['speedup']}, identical outputs: {same}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
