"""Prompts given as token ids (TokensPrompt, or a plain {"prompt_token_ids": [...]} dict), e.g. when the
caller tokenizes itself; the output carries token ids and text alike.

    python examples/tokens_prompt.py [--max-tokens 16]
"""

import argparse

from tokenleap import LLM, SamplingParams, TokensPrompt

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=16)
parser.add_argument("--model", default="smollm2-135m-instruct")
args = parser.parse_args()

llm = LLM(model=args.model)
tokenizer = llm.get_tokenizer()
ids = tokenizer.encode("The capital of France is", add_special_tokens=False)
params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
by_ids, by_dict, by_text = llm.generate(
    [TokensPrompt(prompt_token_ids=ids), {"prompt_token_ids": ids}, "The capital of France is"], params,
    use_tqdm=False,
)
print("prompt ids:", by_ids.prompt_token_ids)
print("output ids:", by_ids.outputs[0].token_ids)
print("output text:", repr(by_ids.outputs[0].text))
print("same as the dict prompt and the text prompt:",
      by_ids.outputs[0].token_ids == by_dict.outputs[0].token_ids == by_text.outputs[0].token_ids)
