"""What n-gram drafting could give on a model's own greedy answers, without a GPU: generate the answers once,
then replay speculative decoding offline for several proposer settings (greedy output does not depend on the
drafts, so the accepted counts are exact) and estimate the speedup from per-step costs measured on the GPU.

    python tests/benchmarks/ngram_offline.py --model PATH.gguf [--verify-cost 1.30 --no-draft-cost 1.12]

Costs are in plain decode steps: a verify step (1 + k tokens) and a step without drafts, in a speculative
engine. The defaults are run H's (H100, SmolLM2): a 1 + 15 verify step ~1.15 decode forwards plus the host
gap before the next launch; a draft-less step is a decode step without async scheduling. With them the
estimates came within 0.00-0.10x of the end-to-end speedups gpu_compare.py measured (answers generated on
CPU in fp32, which differ from the GPU's bf16 answers in places).
"""

from __future__ import annotations

import argparse

from tokenleap import LLM, SamplingParams
from tokenleap.bench.prompts import code_editing_prompts, module_editing_prompts, summarization_prompts
from tokenleap_ngram import lookup_reference

SETS = {"code-editing": code_editing_prompts, "summarization": summarization_prompts,
        "module-editing": module_editing_prompts}


def earliest_lookup(token_ids: list[int], num_drafts: int, lo: int, hi: int) -> list[int]:
    """Like ngram's lookup, but the earliest occurrence of the longest matching n-gram (prompt first)."""
    size = len(token_ids)
    for n in range(min(hi, size - 1), lo - 1, -1):
        suffix = token_ids[size - n :]
        for end in range(n, size):
            if token_ids[end - n : end] == suffix:
                return token_ids[end : end + num_drafts]
    return []


def replay(answers, k: int, lo: int, hi: int, lookup, verify_cost: float, no_draft_cost: float) -> dict:
    """Speculative decoding replayed on (prompt, answer) pairs: tokens per step (the prefill's token counted
    as a step), share of steps with drafts, estimated speedup over plain decoding (one decode step per
    token)."""
    steps = drafted = tokens = 0
    cost = 0.0
    for prompt, answer in answers:
        history, i = list(prompt) + answer[:1], 1
        steps, cost = steps + 1, cost + 1  # the first token comes from the prefill, as without drafts
        while i < len(answer):
            room = len(answer) - i - 1  # the engine never drafts past max_tokens (here: the answer's end)
            drafts = lookup(history, min(k, room), lo, hi) if room > 0 else []
            accepted = 0
            while accepted < len(drafts) and drafts[accepted] == answer[i + accepted]:
                accepted += 1
            history.extend(answer[i : i + accepted + 1])
            i += accepted + 1
            steps, drafted = steps + 1, drafted + bool(drafts)
            cost += verify_cost if drafts else no_draft_cost
        tokens += len(answer)
    return dict(tokens_per_step=tokens / steps, steps_with_drafts=drafted / steps, speedup=tokens / cost)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--verify-cost", type=float, default=1.30)
    ap.add_argument("--no-draft-cost", type=float, default=1.12)
    args = ap.parse_args()
    llm = LLM(model=args.model, max_num_seqs=10, disable_log_stats=True)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    for name, prompts in SETS.items():
        outs = llm.chat([[{"role": "user", "content": p}] for p in prompts()], params, use_tqdm=False)
        answers = [(list(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outs]
        print(f"{name}: {sum(len(a) for _, a in answers)} answer tokens")
        for k in (8, 15):
            for lo, hi in ((1, 4), (2, 4), (1, 8), (3, 8)):
                for label, lookup in (("most recent", lookup_reference), ("earliest", earliest_lookup)):
                    r = replay(answers, k, lo, hi, lookup, args.verify_cost, args.no_draft_cost)
                    print(f"  k={k:2d} lookup {lo}..{hi} {label:>11}: {r['tokens_per_step']:.2f} tokens/step, "
                          f"drafts on {r['steps_with_drafts']:.0%} of steps, estimated {r['speedup']:.2f}x")


if __name__ == "__main__":
    main()
