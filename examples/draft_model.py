"""Speculative decoding with a draft model: a smaller model with the target's tokenizer drafts k tokens on its own
paged KV cache, the target verifies them in one pass.

    python examples/draft_model.py [--max-tokens 64] [--model smollm2-135m-instruct] [--draft MODEL]

The default model has no smaller sibling here, so by default it drafts for itself: every draft is accepted, which
shows the mechanics (and that the draft's cache follows the target's), not a speed-up. Pass a smaller model of
the same tokenizer with --draft for a real one.
"""

import argparse

from tokenleap import LLM, SamplingParams

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=48)
parser.add_argument("--model", default="smollm2-135m-instruct")
parser.add_argument("--draft", default=None, help="the draft model (default: the target itself)")
args = parser.parse_args()

llm = LLM(model=args.model, max_model_len=1024, speculative_config={
    "method": "draft_model", "model": args.draft or args.model, "num_speculative_tokens": 4,
})
params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
out = llm.chat([{"role": "user", "content": "Name three planets and one fact about each."}], params,
               use_tqdm=False)[0]
print(out.outputs[0].text)
spec = out.metrics.spec_decode
print(f"tokens: {len(out.outputs[0].token_ids)}, mean acceptance length: {spec.mean_acceptance_length:.2f}, "
      f"drafts accepted: {spec.num_accepted_tokens} of {spec.num_draft_tokens}")
