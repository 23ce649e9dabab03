"""Mean acceptance length of an EAGLE-3 head on MT-Bench first turns (greedy, chain of k drafts), and its
output against plain decoding. Not part of CI's run:

    .venv/bin/python tests/benchmarks/eagle_acceptance.py --head smollm2-135m-instruct-eagle3 --k 5 \
        [--limit 80] [--max-tokens 128] [--device cpu] [--batch 8]

Mean acceptance length = tokens emitted per verify step = 1 + accepted drafts / verify steps with drafts.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time


def measure(model: str, head: str, k: int, limit: int | None, max_tokens: int, device: str, batch: int,
            check_plain: bool = True) -> dict:
    from tokenleap import LLM, SamplingParams
    from tokenleap.bench.prompts import load_mtbench

    questions = load_mtbench(limit)
    chats = [[{"role": "user", "content": q}] for q in questions]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    llm = LLM(model=model, device=device, max_num_seqs=batch, disable_log_stats=True,
              speculative_config={"method": "eagle3", "model": head, "num_speculative_tokens": k})
    t0 = time.perf_counter()
    spec = [o.outputs[0].token_ids for o in llm.chat(chats, params, use_tqdm=False)]
    spec_s = time.perf_counter() - t0
    c = llm.engine.counters.spec
    result = {"model": model, "head": head, "k": k, "prompts": len(chats), "max_tokens": max_tokens,
              "device": device, "batch": batch, "verify_steps_with_drafts": c.num_drafts,
              "draft_tokens": c.num_draft_tokens, "accepted_tokens": c.num_accepted_tokens,
              "mean_acceptance_length": round(1 + c.num_accepted_tokens / max(c.num_drafts, 1), 3),
              "acceptance_per_position": [round(a / max(c.num_drafts, 1), 3) for a in c.num_accepted_tokens_per_pos],
              "spec_seconds": round(spec_s, 1), "output_tokens": sum(len(s) for s in spec)}
    if check_plain:
        plain_llm = LLM(model=model, device=device, max_num_seqs=batch, disable_log_stats=True)
        t0 = time.perf_counter()
        plain = [o.outputs[0].token_ids for o in plain_llm.chat(chats, params, use_tqdm=False)]
        result["plain_seconds"] = round(time.perf_counter() - t0, 1)
        result["identical_outputs"] = sum(a == b for a, b in zip(spec, plain))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--head", default="smollm2-135m-instruct-eagle3")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--limit", type=int, default=None, help="first N MT-Bench questions (default: all 80)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-plain", action="store_true", help="skip the plain-decoding run and comparison")
    a = p.parse_args()
    print(json.dumps(measure(a.model, a.head, a.k, a.limit, a.max_tokens, a.device, a.batch, not a.no_plain)))


if __name__ == "__main__":
    main()
