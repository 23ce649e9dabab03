"""Repeated-task workload: does suffix decoding learn from earlier outputs?

    python tests/benchmarks/bench_suffix_workload.py [--model smollm2-135m-instruct] [--requests 50]

50 requests each ask for the same kind of rewrite of a different function, one after another (batch 1),
greedy. For suffix and for ngram it prints, per window of 10 requests, the mean acceptance length (over
steps that had drafts) and the tokens emitted per step (all steps; the suffix global tree warms as outputs
accumulate), the overall tokens per step and tokens/s, the drafting cost per
drafted token (time inside ``propose``), and checks that both give the plain-decoding tokens.
"""

from __future__ import annotations

import argparse
import json
import time

from tokenleap import LLM, SamplingParams

OPS = [("add", "+"), ("sub", "-"), ("mul", "*"), ("mod", "%"), ("pow", "**")]
SUBJECTS = ["price", "count", "width", "score", "level", "weight", "speed", "total", "limit", "offset"]
INSTRUCTION = ("Rewrite the following Python function with type hints and a one-line docstring. "
               "Keep the logic the same and answer with only the code.\n\n")


def workload(n: int) -> list[list[dict]]:
    chats = []
    for i in range(n):
        name, op = OPS[i % len(OPS)]
        subject = SUBJECTS[(i // len(OPS)) % len(SUBJECTS)]
        func = (f"def {name}_{subject}(a, b):\n    result = a {op} b\n    if result < 0:\n        result = 0\n"
                f"    return result\n")
        chats.append([{"role": "user", "content": INSTRUCTION + func}])
    return chats


def run(llm: LLM, chats, max_tokens: int, window: int) -> dict:
    driver = llm.engine.driver
    spent = [0.0]
    if driver is not None:
        propose = driver.proposer.propose

        def timed(batch):
            t0 = time.perf_counter()
            out = propose(batch)
            spent[0] += time.perf_counter() - t0
            return out

        driver.proposer.propose = timed
    sp = SamplingParams(temperature=0, max_tokens=max_tokens)
    outs, lengths, steps_per_request = [], [], []
    steps0, t0 = llm.engine.counters.num_steps, time.perf_counter()
    for chat in chats:  # one at a time: each request sees the outputs of all earlier ones
        o = llm.chat([chat], sp, use_tqdm=False)[0]
        outs.append(o.outputs[0].token_ids)
        lengths.append(o.metrics.spec_decode)
        steps_per_request.append(o.metrics.num_generation_steps)
    secs = time.perf_counter() - t0
    steps = llm.engine.counters.num_steps - steps0
    tokens = sum(len(t) for t in outs)
    windows, window_tps = [], []
    for w in range(0, len(chats), window):
        stats = lengths[w : w + window]
        drafts = sum(s.num_drafts for s in stats)
        acc = sum(s.num_accepted_tokens for s in stats)
        windows.append(round(1 + acc / drafts, 2) if drafts else 1.0)
        n_tok = sum(len(t) for t in outs[w : w + window])
        window_tps.append(round(n_tok / sum(steps_per_request[w : w + window]), 2))
    drafted = sum(s.num_draft_tokens for s in lengths)
    return dict(tokens=tokens, steps=steps, tokens_per_step=round(tokens / steps, 3),
                tokens_per_s=round(tokens / secs, 1),
                acceptance_length_per_window=windows, tokens_per_step_per_window=window_tps, drafted_tokens=drafted,
                us_per_drafted_token=round(spent[0] / drafted * 1e6, 1) if drafted else None, outputs=outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--out")
    args = ap.parse_args()
    chats = workload(args.requests)
    configs = {
        "plain": None,
        "ngram": {"method": "ngram", "num_speculative_tokens": args.k, "prompt_lookup_max": 4, "prompt_lookup_min": 2},
        "suffix": {"method": "suffix", "num_speculative_tokens": args.k},
    }
    results = {}
    for name, cfg in configs.items():
        llm = LLM(model=args.model, max_num_seqs=1, disable_log_stats=True, speculative_config=cfg)
        results[name] = run(llm, chats, args.max_tokens, args.window)
        del llm
    plain = results["plain"]["outputs"]
    for name in ("ngram", "suffix"):
        r = results[name]
        print(f"{name:>6}: per {args.window} requests: acceptance length {r['acceptance_length_per_window']}, "
              f"tokens/step {r['tokens_per_step_per_window']}; overall tokens/step {r['tokens_per_step']}, "
              f"{r['tokens_per_s']} tokens/s "
              f"(plain {results['plain']['tokens_per_s']}), drafting {r['us_per_drafted_token']} us/drafted token, "
              f"identical to plain: {r['outputs'] == plain}")
    if args.out:
        for r in results.values():
            r.pop("outputs")
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
