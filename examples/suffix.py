"""SuffixDecoding: drafts from suffix trees over this request and over earlier requests' outputs, so repeated
tasks draft more as the shared tree fills. The second round of the same requests shows it.

    python examples/suffix.py [--max-tokens 32]
"""

import argparse

from tokenleap import LLM, SamplingParams

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=32)
parser.add_argument("--model", default="smollm2-135m-instruct")
args = parser.parse_args()

llm = LLM(model=args.model, speculative_config={"method": "suffix", "num_speculative_tokens": 8})
params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
prompts = ["List three fruits, one per line.", "List three colours, one per line."]
for round_ in (1, 2):
    outs = llm.generate(prompts, params, use_tqdm=False)
    for out in outs:
        spec = out.metrics.spec_decode
        print(f"round {round_}: {out.outputs[0].text!r} "
              f"(mean acceptance length {spec.mean_acceptance_length:.2f})")
