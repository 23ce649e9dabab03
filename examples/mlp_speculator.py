"""MLP speculator (IBM's fms-extras layout, vLLM's `mlp_speculator`): small MLP stages on the target's last hidden
state draft k tokens, one per stage. The default model ships with one (`smollm2-135m-instruct-mlp`).

    python examples/mlp_speculator.py [--max-tokens 64] [--model smollm2-135m-instruct] \
        [--speculator smollm2-135m-instruct-mlp]
"""

import argparse

from tokenleap import LLM, SamplingParams

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=64)
parser.add_argument("--model", default="smollm2-135m-instruct")
parser.add_argument("--speculator", default="smollm2-135m-instruct-mlp")
args = parser.parse_args()

llm = LLM(model=args.model, speculative_config={"method": "mlp_speculator", "model": args.speculator,
                                                "num_speculative_tokens": 3})
params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
out = llm.chat([{"role": "user", "content": "List four uses of copper."}], params, use_tqdm=False)[0]
print(out.outputs[0].text)
spec = out.metrics.spec_decode
print(f"tokens: {len(out.outputs[0].token_ids)}, mean acceptance length: {spec.mean_acceptance_length:.2f}, "
      f"drafts accepted: {spec.num_accepted_tokens} of {spec.num_draft_tokens}")
