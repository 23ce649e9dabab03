"""EAGLE-3 speculative decoding with the head shipped for the default model: a one-layer head reads three of the
target's hidden layers and drafts a chain of k tokens; the target verifies them in one pass. Greedy output is
plain decoding's, token for token; the example checks it.

    python examples/eagle3.py [--max-tokens 64] [--model smollm2-135m-instruct] [--head smollm2-135m-instruct-eagle3]

--head takes any EAGLE-3 head folder (yuhuili / SpecForge / speculators layouts) or `tokenleap-eagle train`'s
output for your target.
"""

import argparse

from tokenleap import LLM, SamplingParams

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=64)
parser.add_argument("--model", default="smollm2-135m-instruct")
parser.add_argument("--head", default="smollm2-135m-instruct-eagle3")
args = parser.parse_args()

chat = [{"role": "user", "content": "Explain in three sentences why the sky is blue."}]
params = SamplingParams(temperature=0, max_tokens=args.max_tokens)

llm = LLM(model=args.model, speculative_config={"method": "eagle3", "model": args.head, "num_speculative_tokens": 5})
out = llm.chat([chat], params, use_tqdm=False)[0]
print(out.outputs[0].text)
spec = out.metrics.spec_decode
print(f"tokens: {len(out.outputs[0].token_ids)}, mean acceptance length: {spec.mean_acceptance_length:.2f}, "
      f"drafts accepted: {spec.num_accepted_tokens} of {spec.num_draft_tokens}")
del llm

plain = LLM(model=args.model).chat([chat], params, use_tqdm=False)[0]
print("same tokens as plain decoding:", plain.outputs[0].token_ids == out.outputs[0].token_ids)
