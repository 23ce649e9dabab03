"""What one speculative step with a head costs on a Llama-3-8B-shaped target (run on a CUDA machine):

    python tests/benchmarks/heads_step_8b_gpu.py --out heads_step_8b.json

Random bf16 weights throughout (the target through ``load_format="dummy"``, the heads written by the test
helpers in their public layouts at full size), batch 1, greedy, a 128-token prompt, 48 new tokens:
- plain: the engine's decode step (wall time, median) and its captured forward alone;
- eagle3: an EAGLE-3 head shaped for the 8B (one Llama layer with q/k/v over 2H, fc 3H -> H, a 32,000-token draft
  vocabulary), chain of k = 5; one step = the catch-up and 5 drafts + the verify of 6. Its bandwidth floor: the
  target's weights once, the head's fc once and its layer and LM head once per draft, the target's KV read;
  the step's ratio to that floor and to a plain step, and the implied speedup at 5.4 tokens per step (SGLang's
  measured mean for Llama-3.1-8B with its EAGLE-3 head);
- mlp_speculator: IBM's shape for Llama-3-8B (emb_dim 4096, inner_dim 3072, tied, scaled input), n_predict 3;
  one step = 3 drafts + the verify of 4, and its ratio to a plain step.
Random heads draft tokens the target rejects: every step verifies 1 + k tokens and emits one, the full cost.
Each head runs twice: drafting on the device inside the verify graph (the default), and on the host between steps
(async scheduling off).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from draft_step_gpu import CONTEXT, log, step_ms, write_config  # noqa: E402
from gpu_compare import LLAMA3_8B, bandwidth_tb_s  # noqa: E402
from graph_replay import graph_replay_ms  # noqa: E402
from helpers.eagle_heads import write_eagle3_head  # noqa: E402
from helpers.tiny_heads import make_tiny_speculator  # noqa: E402
from tokenleap import LLM  # noqa: E402

EAGLE_K, MLP_K = 5, 3
TOKENS_PER_STEP = 5.4  # SGLang, Llama-3.1-8B-Instruct + EAGLE-3 on MT-Bench
DRAFT_VOCAB = 32000


def engine(target: str, spec: dict | None, **kwargs) -> LLM:
    return LLM(target, load_format="dummy", dtype="bfloat16", max_model_len=2048, max_num_seqs=1,
               kv_cache_memory_bytes=2 << 30, disable_log_stats=True, speculative_config=spec, **kwargs)


def free(llm: LLM) -> None:
    del llm
    gc.collect()
    torch.cuda.empty_cache()


def spec_step(target: str, spec: dict, plain_step_ms: float, **kwargs) -> dict:
    """A speculative engine's step at batch 1 (random drafts: every step verifies 1 + k and emits one), its
    verify forward alone, and the step over a plain one. ``kwargs``: engine options (async_scheduling=False: the
    proposer drafts on the host between steps instead of on the device inside the verify graph)."""
    k = spec["num_speculative_tokens"]
    llm = engine(target, spec, **kwargs)
    row = {"k": k}
    row["step_ms"], _ = step_ms(llm, 1)
    row["verify_forward_ms"] = graph_replay_ms(llm, 1, 1 + k)
    row["step_over_plain_step"] = row["step_ms"] / plain_step_ms
    free(llm)
    return row


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def head_floor_bytes(head_dir: Path) -> dict:
    """Bytes an EAGLE-3 step of k drafts reads from the head: fc once, the rest (layer, norms, LM head) per draft."""
    from safetensors import safe_open

    fc = rest = 0
    with safe_open(str(head_dir / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if name in ("d2t", "t2d"):
                continue
            t = f.get_slice(name)
            n = 2  # bf16 at run time
            for d in t.get_shape():
                n *= d
            if name.startswith("fc."):
                fc += n
            else:
                rest += n
    return {"fc": fc, "per_draft": rest}


def kv_bytes(cfg: dict, positions: int) -> int:
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * head_dim * 2 * positions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out) if args.out else None
    tmp = Path(tempfile.mkdtemp())
    target = write_config(LLAMA3_8B, "llama3-8b-shape")
    bw = bandwidth_tb_s()
    res: dict = {"device": torch.cuda.get_device_name(), "bandwidth_tb_s": bw, "batch": 1, "prompt_tokens": 128,
                 "context_timed": CONTEXT}

    def save() -> None:
        if out is not None:
            out.write_text(json.dumps(res, indent=2))

    llm = engine(target, None)
    target_bytes = weight_bytes(llm.engine.runner.model)
    res["target_weight_bytes"] = target_bytes
    res["plain_step_ms"], _ = step_ms(llm, 1)
    res["plain_forward_ms"] = graph_replay_ms(llm, 1, 1)
    res["decode_floor_ms"] = (target_bytes + kv_bytes(LLAMA3_8B, CONTEXT)) / bw / 1e9
    log(f"{res['device']}, {bw:.2f} TB/s: plain decode step {res['plain_step_ms']:.3f} ms, forward (graph) "
        f"{res['plain_forward_ms']:.3f} ms, floor {res['decode_floor_ms']:.3f} ms")
    free(llm)
    save()

    try:
        log("writing an 8B-shaped EAGLE-3 head ...")
        head = write_eagle3_head(tmp / "eagle3-8b", 4096, 128256, DRAFT_VOCAB, fmt="safetensors", heads=32, kv_heads=8,
                                 intermediate=14336, dtype=torch.bfloat16, aux_layers=[2, 16, 29])
        hb = head_floor_bytes(head)
        k = EAGLE_K
        row = res["eagle3"] = spec_step(target, {"method": "eagle3", "model": str(head), "num_speculative_tokens": k},
                                        res["plain_step_ms"])
        row.update(head_fc_bytes=hb["fc"], head_per_draft_bytes=hb["per_draft"])
        floor_bytes = target_bytes + kv_bytes(LLAMA3_8B, CONTEXT) + hb["fc"] + k * hb["per_draft"]
        row["floor_ms"] = floor_bytes / bw / 1e9
        row["step_over_floor"] = row["step_ms"] / row["floor_ms"]
        row["floor_over_decode_floor"] = row["floor_ms"] / res["decode_floor_ms"]
        row["implied_speedup_at_5.4"] = TOKENS_PER_STEP * res["plain_step_ms"] / row["step_ms"]
        log(f"eagle3 k={k}: step {row['step_ms']:.3f} ms = {row['step_over_floor']:.2f}x its floor "
            f"{row['floor_ms']:.3f} ms ({row['floor_over_decode_floor']:.2f}x a decode floor), "
            f"{row['step_over_plain_step']:.2f}x a plain step; verify forward {row['verify_forward_ms']:.3f} ms; "
            f"implied speedup at {TOKENS_PER_STEP} tokens a step {row['implied_speedup_at_5.4']:.2f}x")
        host = res["eagle3_host_drafting"] = spec_step(
            target, {"method": "eagle3", "model": str(head), "num_speculative_tokens": k}, res["plain_step_ms"],
            async_scheduling=False)
        host["step_over_floor"] = host["step_ms"] / row["floor_ms"]
        log(f"eagle3 k={k}, drafting on the host: step {host['step_ms']:.3f} ms = {host['step_over_floor']:.2f}x the "
            f"floor, {host['step_over_plain_step']:.2f}x a plain step")
    except Exception as e:
        res["eagle3_error"] = repr(e)
        traceback.print_exc()
    save()

    try:
        log("writing an 8B-shaped MLP speculator ...")
        spec_dir = make_tiny_speculator(tmp / "mlp-8b", emb_dim=4096, vocab_size=128256, n_predict=MLP_K,
                                        inner_dim=3072, tie_weights=True, scale_input=True, dtype=torch.bfloat16)
        row = res["mlp_speculator"] = spec_step(
            target, {"method": "mlp_speculator", "model": str(spec_dir), "num_speculative_tokens": MLP_K},
            res["plain_step_ms"])
        log(f"mlp_speculator k={MLP_K}: step {row['step_ms']:.3f} ms = {row['step_over_plain_step']:.2f}x a plain "
            f"step; verify forward {row['verify_forward_ms']:.3f} ms")
        host = res["mlp_speculator_host_drafting"] = spec_step(
            target, {"method": "mlp_speculator", "model": str(spec_dir), "num_speculative_tokens": MLP_K},
            res["plain_step_ms"], async_scheduling=False)
        log(f"mlp_speculator k={MLP_K}, drafting on the host: step {host['step_ms']:.3f} ms = "
            f"{host['step_over_plain_step']:.2f}x a plain step")
    except Exception as e:
        res["mlp_error"] = repr(e)
        traceback.print_exc()
    save()
    if out is not None:
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
