"""Train an EAGLE-3 head for a target with `tokenleap-eagle train`, then speculate with it. The target answers
ShareGPT prompts (its own greedy answers are the training data), the head learns to draft them.

    python examples/train_eagle_head.py [--max-tokens 48] [--model smollm2-135m-instruct] [--prompts 8]

This is the mechanics at toy scale (a few prompts, on CPU, a minute or two): the head it makes drafts little.
A useful head takes thousands of prompts on a GPU, e.g. for the default model (about 4.5 minutes on one H100):
`tokenleap-eagle train --target smollm2-135m-instruct --out DIR --device cuda --num-prompts 6000 --epochs 14`
(scripts/train_shipped_heads.sh has the exact settings of the shipped head).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenleap import LLM, SamplingParams

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=48)
parser.add_argument("--model", default="smollm2-135m-instruct")
parser.add_argument("--prompts", type=int, default=8, help="ShareGPT prompts the target answers for training")
args = parser.parse_args()

out = Path(tempfile.mkdtemp()) / "head"
train = [str(Path(sys.executable).parent / "tokenleap-eagle"), "train", "--target", args.model, "--out", str(out),
         "--device", "cpu", "--num-prompts", str(args.prompts), "--max-tokens", "48", "--max-prompt-tokens", "128",
         "--draft-vocab-size", "1024", "--epochs", "2", "--no-progress"]
print("$", " ".join(train[1:]), flush=True)
subprocess.run(train, check=True)
print("head files:", [name for name in ("config.json", "model.safetensors") if (out / name).exists()])

llm = LLM(model=args.model, speculative_config={"method": "eagle3", "model": str(out), "num_speculative_tokens": 3})
res = llm.chat([{"role": "user", "content": "Give two tips for learning a language."}],
               SamplingParams(temperature=0, max_tokens=args.max_tokens), use_tqdm=False)[0]
print(res.outputs[0].text)
print(f"mean acceptance length with the toy head: {res.metrics.spec_decode.mean_acceptance_length:.2f}")
