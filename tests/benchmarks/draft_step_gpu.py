"""What one draft_model speculative step costs against its parts (run on a CUDA machine):

    python tests/benchmarks/draft_step_gpu.py --out results.json

Llama-3-8B-shaped target, Llama-3.2-1B-shaped draft, random bf16 weights (load_format="dummy"), k = 5, batch 1
and 16. Prints, per batch size:
- step: wall time of an engine step in generation (draft chain + verify + host work), median over the steps after
  the first few (random drafts are rejected: every step verifies 1 + k tokens and emits one);
- parts: k draft decode forwards timed alone (the draft's one-token forward, back to back) + the target's 1 + k
  verify forward (its captured graph replayed) + the target's 1-token decode forward; step / (k draft + verify);
- the draft's one-token forward against its bandwidth floor (draft weight bytes / measured copy bandwidth);
- the implied speedup over plain decoding for per-token acceptance rates 0.6 / 0.7 / 0.8:
  E[tokens per step] = (1 - a^(k+1)) / (1 - a), times decode step / speculative step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_compare import LLAMA3_8B, bandwidth_tb_s  # noqa: E402
from graph_replay import graph_replay_ms  # noqa: E402
from tokenleap import LLM, SamplingParams  # noqa: E402

LLAMA32_1B = dict(LLAMA3_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, tie_word_embeddings=True, head_dim=64)


def write_config(config: dict, name: str) -> str:
    folder = Path(tempfile.mkdtemp()) / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def draft_forward_ms(proposer, b: int, n: int = 30, context: int = 256) -> float:
    """The draft's one-token forward for ``b`` requests at ``context`` positions, eager, timed back to back."""
    from tokenleap_draft.forward import Run, paged_forward

    blocks = list(range(1, (context + 16) // 16 + 2))
    runs = [Run([7], context, blocks) for _ in range(b)]

    def once():
        hidden = paged_forward(proposer.model, proposer.kv, runs, proposer.block_size, proposer.max_seq_len,
                               proposer.backend, proposer.device)
        proposer.model.compute_logits(hidden).argmax(dim=-1)

    for _ in range(3):
        once()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        once()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    k = args.k
    bw = bandwidth_tb_s()
    target, draft = write_config(LLAMA3_8B, "llama3-8b-shape"), write_config(LLAMA32_1B, "llama32-1b-shape")
    llm = LLM(target, load_format="dummy", dtype="bfloat16", max_model_len=2048, disable_log_stats=True,
              max_num_seqs=16, speculative_config={"method": "draft_model", "model": draft, "num_speculative_tokens": k,
                                                   "draft_load_format": "dummy"})
    engine = llm.engine
    proposer = engine.driver.proposer
    draft_bytes = sum(p.numel() * p.element_size() for p in proposer.model.parameters())
    results = {"bandwidth_tb_s": bw, "k": k, "draft_weight_bytes": draft_bytes, "batches": {}}
    print(f"copy bandwidth {bw:.2f} TB/s; draft weights {draft_bytes / 1e9:.2f} GB, floor "
          f"{draft_bytes / bw / 1e9:.3f} ms")
    for b in [int(x) for x in args.batches.split(",")]:
        step_times: list[float] = []
        inner = engine.step

        def timed():
            t0 = time.perf_counter()
            out = inner()
            step_times.append(time.perf_counter() - t0)
            return out

        engine.step = timed
        prompts = [{"prompt_token_ids": [1000 + 17 * i + j for j in range(128)]} for i in range(b)]
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=48, ignore_eos=True), use_tqdm=False)
        engine.step = inner
        step_ms = statistics.median(step_times[4:]) * 1e3
        draft_ms = draft_forward_ms(proposer, b)
        verify_ms = graph_replay_ms(llm, b, 1 + k)
        decode_ms = graph_replay_ms(llm, b, 1)
        parts = k * draft_ms + verify_ms
        row = dict(step_ms=step_ms, draft_forward_ms=draft_ms, verify_ms=verify_ms, decode_ms=decode_ms,
                   parts_ms=parts, step_over_parts=step_ms / parts,
                   draft_over_floor=draft_ms / (draft_bytes / bw / 1e9),
                   implied_speedup={str(a): (1 - a ** (k + 1)) / (1 - a) * decode_ms / step_ms for a in (0.6, 0.7, 0.8)})
        results["batches"][str(b)] = row
        print(f"batch {b}: step {step_ms:.2f} ms; parts {k} x {draft_ms:.3f} (draft) + {verify_ms:.3f} (verify) = "
              f"{parts:.2f} ms -> {step_ms / parts:.2f}x; decode {decode_ms:.3f} ms; draft forward "
              f"{row['draft_over_floor']:.2f}x its floor; implied speedup at a = 0.6/0.7/0.8: "
              + " / ".join(f"{v:.2f}x" for v in row["implied_speedup"].values()))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
