"""Tensor parallelism over two hosts (or two terminals of one machine standing in for them).

Run the script once per rank with torch.distributed's standard rendezvous variables; rank 0 builds the LLM and
prints the completion, the other ranks serve it until it is done:

    # host A (rank 0; MASTER_ADDR is host A's address as host B reaches it)
    RANK=0 WORLD_SIZE=2 MASTER_ADDR=hostA MASTER_PORT=29500 python examples/tensor_parallel_two_hosts.py MODEL
    # host B
    RANK=1 WORLD_SIZE=2 MASTER_ADDR=hostA MASTER_PORT=29500 python examples/tensor_parallel_two_hosts.py MODEL

MODEL (default: the smollm2-135m-instruct alias) must be readable on every host at the same path.
"""

from __future__ import annotations

import argparse
import os

from tokenleap import LLM, SamplingParams
from tokenleap.distributed import run_worker

PROMPT = {"prompt_token_ids": [1, 5, 17, 33, 40, 9, 17, 33]}
PARAMS = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=PARAMS.max_tokens)
    args = parser.parse_args()
    if int(os.environ.get("RANK", "0")) > 0:
        run_worker()  # returns when rank 0's LLM is deleted or its program ends
        return
    llm = LLM(model=args.model, tensor_parallel_size=int(os.environ.get("WORLD_SIZE", "1")), disable_log_stats=True)
    params = PARAMS.model_copy(update={"max_tokens": args.max_tokens})
    out = llm.generate([PROMPT], params, use_tqdm=False)
    print("token ids:", out[0].outputs[0].token_ids)
    print("text:", repr(out[0].outputs[0].text))


if __name__ == "__main__":
    main()
