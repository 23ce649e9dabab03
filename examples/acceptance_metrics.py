"""Reading speculative-decoding figures: per request (RequestOutput.metrics.spec_decode) and for the engine
as a whole (LLM.get_metrics(): vLLM-style Counter / Vector / Gauge / Histogram objects).

    python examples/acceptance_metrics.py [--max-tokens 48]
"""

import argparse

from tokenleap import LLM, SamplingParams

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=48)
parser.add_argument("--model", default="smollm2-135m-instruct")
args = parser.parse_args()

llm = LLM(model=args.model, speculative_config={"method": "ngram", "num_speculative_tokens": 4,
                                                 "prompt_lookup_min": 1, "prompt_lookup_max": 3})
prompts = ["Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps.",
           "Count from 1 to 20, separated by commas."]
outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens), use_tqdm=False)

print("== per request")
for out in outs:
    s = out.metrics.spec_decode
    print(f"request {out.request_id}: {len(out.outputs[0].token_ids)} tokens, steps with drafts {s.num_drafts}, "
          f"drafted {s.num_draft_tokens}, accepted {s.num_accepted_tokens}, "
          f"mean acceptance length {s.mean_acceptance_length:.2f}, "
          f"per position {[round(r, 2) for r in s.per_position_acceptance_rate]}")

print("== engine metrics (get_metrics)")
metrics = {m.name: m for m in llm.get_metrics()}
for name in ("tokenleap:spec_decode_num_drafts", "tokenleap:spec_decode_num_draft_tokens",
             "tokenleap:spec_decode_num_accepted_tokens", "tokenleap:spec_decode_num_accepted_tokens_per_pos",
             "tokenleap:generation_tokens"):
    m = metrics[name]
    print(f"{name}: {getattr(m, 'values', None) or m.value}")
drafts = metrics["tokenleap:spec_decode_num_drafts"].value
accepted = metrics["tokenleap:spec_decode_num_accepted_tokens"].value
print(f"mean acceptance length over the run: {1 + accepted / drafts if drafts else 1.0:.2f}")
