"""Where the host time of an eager step's matmuls goes (issue 17: steps admitting several requests took 28-45 ms of
host time on an H100, 16 ms of it inside 120 ``aten::mm`` calls of ~146 us each, against ~1.7 ms of GPU time).

    python tests/benchmarks/eager_linear_host_time.py [--variants default,lt,mem50,eager] [--out FILE.json]

For each variant a child process (so that environment variables and the allocator start fresh) measures, on a
SmolLM2-135M-shaped model with random bf16 weights (``load_format="dummy"``, no checkpoint needed):

- ``bare_before``: host microseconds per ``F.linear`` call of the model's four shapes at 200 and 1,650 rows, before
  any engine exists (launches only: the loop does not wait for the GPU);
- ``admit_ms``: the wall time of one step admitting 15 fresh prompts of 80-140 tokens (three rounds);
- ``bare_after``: the same ``F.linear`` loop inside the process that now holds the engine (its KV cache, graphs);
- ``allocator``: what the caching allocator did during one admission (``torch.cuda.memory_stats`` deltas:
  device mallocs / frees, retries after a failed malloc).

Variants: ``default``; ``lt`` (``TORCH_BLAS_PREFER_CUBLASLT=1``); ``mem50`` (``gpu_memory_utilization=0.5``);
``eager`` (``enforce_eager=True``: no graphs captured).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "hidden_act": "silu",
}
SHAPES = {"qkv": (960, 576), "o_proj": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
VARIANTS = {
    "default": ({}, {}),
    "lt": ({"TORCH_BLAS_PREFER_CUBLASLT": "1"}, {}),
    "mem50": ({}, {"gpu_memory_utilization": 0.5}),
    "eager": ({}, {"enforce_eager": True}),
}


def bare_linear_us(rows: int, calls: int = 200) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    out = {}
    for name, (n, k) in SHAPES.items():
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        F.linear(x, w)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            F.linear(x, w)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        out[name] = round((t1 - t0) / calls * 1e6, 2)
    return out


def child(variant: str) -> dict:
    import torch
    from tokenleap import LLM, SamplingParams

    _, kwargs = VARIANTS[variant]
    result = {"variant": variant, "bare_before": {m: bare_linear_us(m) for m in (200, 1650)}}
    folder = Path(tempfile.mkdtemp()) / "smollm2-shape"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMOLLM2))
    llm = LLM(model=str(folder), load_format="dummy", dtype="bfloat16", max_num_seqs=64, disable_log_stats=True,
              max_model_len=2048, **kwargs)
    rng = random.Random(0)
    params = SamplingParams(temperature=0, max_tokens=1)

    def admit(n: int) -> float:
        prompts = [{"prompt_token_ids": [rng.randrange(100, 40000) for _ in range(rng.randrange(80, 141))]}
                   for _ in range(n)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        torch.cuda.synchronize()
        return round((time.perf_counter() - t0) * 1e3, 2)

    admit(1)
    admit(15)
    result["admit_ms"] = [admit(15) for _ in range(3)]
    keys = ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams")
    before = torch.cuda.memory_stats()
    result["admit_ms_counted"] = admit(15)
    after = torch.cuda.memory_stats()
    result["allocator"] = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    result["bare_after"] = {m: bare_linear_us(m) for m in (200, 1650)}
    free, total = torch.cuda.mem_get_info()
    result["free_gib_after"] = round(free / 2**30, 2)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="default,lt,mem50,eager")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(a.child)), flush=True)
        return 0
    results = []
    for v in a.variants.split(","):
        env = dict(os.environ, **VARIANTS[v][0])
        proc = subprocess.run([sys.executable, __file__, "--child", v], env=env, capture_output=True, text=True,
                              timeout=240)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{v}: failed (rc {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
            continue
        results.append(json.loads(line[len("RESULT "):]))
        print(json.dumps(results[-1]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
