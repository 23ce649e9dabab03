"""Faster decoding on a CPU: bfloat16 activations with weight-only int4 linears (for a Q4_1 GGUF such as the
default model, its own 4-bit codes), plus n-gram speculation. `quantization="int8"` and `dtype="bfloat16"` are
the other CPU fast-path settings; the default float32 gives transformers' float32 numbers.

    python examples/cpu_quantized.py [--max-tokens 64] [--model smollm2-135m-instruct] [--quantization int4]
"""

import argparse
import time

from tokenleap import LLM, SamplingParams

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=64)
parser.add_argument("--model", default="smollm2-135m-instruct")
parser.add_argument("--quantization", choices=["int8", "int4"], default="int4")
args = parser.parse_args()

llm = LLM(model=args.model, device="cpu", quantization=args.quantization,
          speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3})
params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
chat = [{"role": "user", "content": "Rewrite in the passive voice: The committee approved the new budget."}]
llm.chat([chat], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)  # warm-up
t0 = time.perf_counter()
out = llm.chat([chat], params, use_tqdm=False)[0]
seconds = time.perf_counter() - t0
print(out.outputs[0].text)
n = len(out.outputs[0].token_ids)
print(f"quantization={args.quantization}: {n} tokens in {seconds:.2f} s ({n / seconds:.1f} tokens/s), "
      f"mean acceptance length {out.metrics.spec_decode.mean_acceptance_length:.2f}")
