"""Greedy (temperature=0: the same tokens every time, with or without speculation) against sampling
(temperature > 0: a seed per request makes it reproducible; speculation keeps the distribution).

    python examples/greedy_vs_sampling.py [--max-tokens 24]
"""

import argparse

from tokenleap import LLM, SamplingParams

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=24)
parser.add_argument("--model", default="smollm2-135m-instruct")
args = parser.parse_args()

llm = LLM(model=args.model, speculative_config={"method": "ngram", "num_speculative_tokens": 4})
prompt = [{"role": "user", "content": "Write one sentence about the sea."}]
greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens)
print("greedy   :", repr(llm.chat(prompt, greedy, use_tqdm=False)[0].outputs[0].text))
# n=3 completions of one prompt, and the same seed again: the same three texts
several = SamplingParams(temperature=0.8, top_p=0.95, n=3, seed=7, max_tokens=args.max_tokens)
first = [c.text for c in llm.chat(prompt, several, use_tqdm=False)[0].outputs]
again = [c.text for c in llm.chat(prompt, several, use_tqdm=False)[0].outputs]
for i, text in enumerate(first):
    print(f"seed 7, #{i}:", repr(text))
print("same seed, same texts:", first == again)
