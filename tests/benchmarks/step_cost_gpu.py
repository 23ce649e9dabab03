"""What a speculative step costs against a plain one on SmolLM2-135M's shape, drafting on the device (inside the
verify graph) against drafting on the host, with the shipped heads (run on a CUDA machine):

    python tests/benchmarks/step_cost_gpu.py [--out results.json]

The target has SmolLM2-135M-Instruct's shape with random bf16 weights (``load_format="dummy"``: no checkpoint to
carry), so the heads' drafts are rejected: every step verifies 1 + k tokens and emits one. A step's work does not
depend on acceptance (the verify step always has 1 + k rows, a head's catch-up always q = k + 1 padded rows), so
its cost here is its cost on the real model; the speedup it implies is tokens per step (measured on the real model,
elsewhere) over the step cost. Batch 1, greedy, a 128-token prompt, 48 new tokens, step wall time median over the
steps after the first few; methods: eagle3 k = 4 and 5 (the shipped head), mlp_speculator k = 3 (the shipped
speculator), draft_model k = 4 (the target's own shape as its draft, dummy weights), each with device drafting
(the default) and with async scheduling off (host drafting); with --torch-head-ops the EAGLE-3 rows run once more
drafting on the device with the head on torch's reference ops instead of core's Triton kernels (the A/B of
`EagleHead.ops`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import tokenleap_eagle.proposer as eagle_proposer  # noqa: E402
from draft_step_gpu import step_ms, write_config  # noqa: E402
from gpu_compare import release  # noqa: E402
from tokenleap import LLM  # noqa: E402
from tokenleap_eagle.head import TORCH_OPS, head_ops  # noqa: E402

SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "hidden_act": "silu",
}


def methods(target: str) -> dict[str, dict | None]:
    out: dict[str, dict | None] = {"plain": None}
    for k in (4, 5):
        out[f"eagle3 k={k}"] = {"method": "eagle3", "model": "smollm2-135m-instruct-eagle3",
                                "num_speculative_tokens": k}
    out["mlp_speculator k=3"] = {"method": "mlp_speculator", "model": "smollm2-135m-instruct-mlp",
                                 "num_speculative_tokens": 3}
    out["draft_model k=4"] = {"method": "draft_model", "model": target, "num_speculative_tokens": 4,
                              "draft_load_format": "dummy"}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default="", help="comma list of method labels to run (plain always runs)")
    ap.add_argument("--torch-head-ops", action="store_true",
                    help="also run the EAGLE-3 rows drafting on the device with the head on torch's ops")
    a = ap.parse_args(argv)
    only = set(filter(None, a.only.split(",")))
    target = write_config(SMOLLM2, "smollm2-135m-shape")
    res: dict = {"device": torch.cuda.get_device_name(), "batch": 1, "methods": {}}
    plain_ms = None
    for label, spec in methods(target).items():
        if spec is not None and only and label not in only:
            continue
        draftings = ("device", "host") if spec is not None else ("none",)
        if a.torch_head_ops and label.startswith("eagle3"):
            draftings += ("device torch-ops",)
        for drafting in draftings:
            name = label if spec is None else f"{label} {drafting}"
            eagle_proposer.head_ops = (lambda backend: TORCH_OPS) if drafting.endswith("torch-ops") else head_ops
            try:
                llm = LLM(target, load_format="dummy", dtype="bfloat16", max_model_len=2048, max_num_seqs=1,
                          kv_cache_memory_bytes=1 << 30, disable_log_stats=True, speculative_config=spec,
                          async_scheduling=drafting != "host")
                on_device = llm.engine.runner.graphs is not None and llm.engine.runner.graphs.drafter is not None
                ms, steps = step_ms(llm, 1)
            except Exception as e:  # noqa: BLE001 - one method's failure must not lose the others' figures
                print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
                res["methods"][name] = {"error": f"{type(e).__name__}: {e}"}
                continue
            if plain_ms is None:
                plain_ms = ms
            row = res["methods"][name] = {"step_ms": ms, "steps": steps, "drafted_on_device": on_device,
                                          "step_over_plain": ms / plain_ms}
            print(f"{name}: step {ms:.3f} ms = {row['step_over_plain']:.2f}x plain (device drafter: {on_device})",
                  flush=True)
            del llm
            release()
            if a.out:
                Path(a.out).write_text(json.dumps(res, indent=1))
    eagle_proposer.head_ops = head_ops  # (the A/B swapped the proposer's op picker; put it back)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
