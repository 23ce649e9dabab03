"""n-gram (prompt lookup) speculative decoding: drafts come from earlier text of the prompt and the output, so
an answer that repeats its input (a code edit, a rewrite) is verified several tokens per forward pass.

    python examples/ngram.py [--max-tokens 64] [--model smollm2-135m-instruct]
"""

import argparse

from tokenleap import LLM, SamplingParams

PROMPT = """Rename the variable `x` to `total` in this function. Reply with the whole function only.

def order_total(items):
    x = 0
    for item in items:
        x += item.price * item.quantity
    return x
"""

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=48)
parser.add_argument("--model", default="smollm2-135m-instruct")
args = parser.parse_args()

llm = LLM(model=args.model, speculative_config={
    "method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 1, "prompt_lookup_max": 4,
})
params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
out = llm.chat([{"role": "user", "content": PROMPT}], params, use_tqdm=False)[0]
print(out.outputs[0].text)
spec = out.metrics.spec_decode
print(f"tokens: {len(out.outputs[0].token_ids)}, mean acceptance length: {spec.mean_acceptance_length:.2f}, "
      f"drafts accepted: {spec.num_accepted_tokens} of {spec.num_draft_tokens}")
