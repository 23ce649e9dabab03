"""Structured outputs under speculation: a JSON schema constrains every token (drafts that break it are rejected
in verification), with n-gram drafts from the record in the prompt. The answer parses.

    python examples/structured_outputs.py [--max-tokens 96] [--model smollm2-135m-instruct]
"""

import argparse
import json

from tokenleap import LLM, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "role": {"type": "string", "enum": ["engineer", "doctor", "teacher", "other"]},
    },
    "required": ["name", "age", "role"],
}
PROMPT = ("Write this person's record as JSON with the keys name, age and role.\n\n"
          "Maria Gonzalez is 28 years old and works as a teacher in Seville.")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=96)
parser.add_argument("--model", default="smollm2-135m-instruct")
args = parser.parse_args()

llm = LLM(model=args.model, speculative_config={"method": "ngram", "num_speculative_tokens": 4,
                                                "prompt_lookup_max": 3})
params = SamplingParams(temperature=0, max_tokens=args.max_tokens, structured_outputs={"json": SCHEMA})
out = llm.chat([{"role": "user", "content": PROMPT}], params, use_tqdm=False)[0]
text = out.outputs[0].text
print(text)
if out.outputs[0].finish_reason == "stop":
    print("parsed:", json.loads(text))
else:  # cut by --max-tokens: a prefix of a valid document
    print(f"stopped by max_tokens after {len(out.outputs[0].token_ids)} tokens (a valid prefix)")
print(f"mean acceptance length: {out.metrics.spec_decode.mean_acceptance_length:.2f}")
