"""What capping oneDNN at AVX-512 costs the CPU path on an Intel Xeon with AMX (``import tokenleap`` sets
``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` unless set, because the AMX kernels are not row-invariant): SmolLM2 in
bfloat16, prefill tokens/s (4 prompts of ~835 tokens, one output token) and greedy decode tokens/s at batch 1 and 8
(64 tokens each). Run it once per instruction set, as oneDNN reads the variable once per process:

    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python tests/benchmarks/cpu_isa_ab.py
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_AMX python tests/benchmarks/cpu_isa_ab.py [--pad-rows 32]

``--pad-rows N`` runs every bfloat16 linear on row blocks of exactly N rows (the last one zero-padded): with AMX
that makes a row's bits independent of the other rows (a fixed M keeps oneDNN on one blocking; measured for
SmolLM2's shapes on 100 rows), at the price of N rows of work for a one-row decode step.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from cpu_float32_rows import blocked


def padded_linear(rows: int, inner):
    """``inner`` (cpu_linear) with bfloat16 weights run on blocks of exactly ``rows`` rows."""
    def linear(x: torch.Tensor, weight, bias=None) -> torch.Tensor:
        # x: [M, K] -> [M, N]
        if not isinstance(weight, torch.Tensor):
            return inner(x, weight, bias)
        y = blocked(x, weight, rows)
        return y if bias is None else y + bias

    return linear


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--pad-rows", type=int, default=0)
    a = ap.parse_args(argv)
    if a.pad_rows:
        import tokenleap.kernels.cpu_linear as cl
        import tokenleap.kernels.cpu_ops as co

        cl.cpu_linear = co.cpu_linear = padded_linear(a.pad_rows, cl.cpu_linear)
    from tokenleap import LLM, SamplingParams
    from tokenleap.bench.prompts import load_mtbench

    llm = LLM(a.model, device="cpu", dtype=a.dtype, disable_log_stats=True)
    questions = load_mtbench(16)
    long_prompts = [" ".join(questions)] * 4
    llm.generate(questions[:2], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(long_prompts, SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
    prefill_s = time.perf_counter() - t0
    decode = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    rates = {}
    for batch in (1, 8):
        t0 = time.perf_counter()
        llm.generate(questions[:batch], decode, use_tqdm=False)
        rates[f"decode_b{batch}_tokens_per_s"] = round(batch * 64 / (time.perf_counter() - t0), 1)
    print(json.dumps({"ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"), "dtype": a.dtype,
                      "pad_rows": a.pad_rows, "prefill_tokens_per_s":
                      round(sum(len(o.prompt_token_ids) for o in outs) / prefill_s), **rates}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
