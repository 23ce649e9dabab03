"""What one draft_model speculative step costs against its parts (run on a CUDA machine):

    python tests/benchmarks/draft_step_gpu.py --out results.json

Llama-3-8B-shaped target, Llama-3.2-1B-shaped draft, random bf16 weights (load_format="dummy"), k = 5, batch 1
and 16. Prints each number as it is measured (and rewrites --out after each batch size), per batch size:
- step: wall time of an engine step in generation (draft forwards + verify + host work), median over the steps
  after the first few (random drafts are rejected: every step verifies 1 + k tokens and emits one); the draft
  drafts on the device inside the verify graph, or with --host-drafting on the host between steps;
- parts, each the captured graph the step replays, timed alone (replayed back to back, CUDA events):
  the draft's first forward (catch-up + first draft: b requests of k + 2 rows, ``FirstForward``), the draft's
  one-token decode forward (``GreedyChain``'s graph, which the step replays k - 1 times) and the target's 1 + k
  verify forward; parts = first + (k - 1) x decode + verify, and step / parts; also k x decode + verify (every
  draft step a one-token forward) and step / that;
- the draft's one-token decode forward and its first forward against the bandwidth floor (draft weight bytes /
  measured copy bandwidth);
- for reference, not in the parts: the draft's one-token forward run eagerly (``paged_forward``);
- the target's 1-token decode forward, and the implied speedup over plain decoding for per-token acceptance rates
  0.6 / 0.7 / 0.8: E[tokens per step] = (1 - a^(k+1)) / (1 - a), times decode step / speculative step.
The graph timings read the KV of ``context`` positions from distinct cache blocks and write to the null block.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_compare import LLAMA3_8B, bandwidth_tb_s  # noqa: E402
from graph_replay import graph_replay_ms  # noqa: E402
from tokenleap import LLM, SamplingParams  # noqa: E402

LLAMA32_1B = dict(LLAMA3_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8, tie_word_embeddings=True, head_dim=64)
CONTEXT = 256  # positions the timed forwards attend to


def log(message: str) -> None:
    print(message, flush=True)


def write_config(config: dict, name: str) -> str:
    folder = Path(tempfile.mkdtemp()) / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def replay_ms(replay: Callable[[], None], n: int = 50) -> float:
    """GPU time of one ``replay()``, replayed ``n`` times back to back (after a few warm-up replays)."""
    for _ in range(5):
        replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def replay_tables(rows: int, width: int, num_blocks: int) -> torch.Tensor:
    """[rows, width] int32 block tables of distinct real blocks (block 0 is the null block)."""
    return (torch.arange(rows * width, dtype=torch.int32) % (num_blocks - 1) + 1).view(rows, width)


@torch.inference_mode()  # the graphs' static tensors are inference tensors
def chain_step_ms(proposer, b: int, num_blocks: int) -> float:
    """The draft's one-token decode forward as the step runs it: ``GreedyChain``'s captured graph for ``b`` rows at
    ``CONTEXT`` positions, writing to the null slot."""
    bucket = proposer.chain.bucket(b)
    graph, io = proposer.chain.graph(bucket)
    io["ids"].fill_(7)
    io["positions"].fill_(CONTEXT)
    io["slots"].zero_()
    io["seq_lens"].fill_(CONTEXT + 1)
    io["tables"].copy_(replay_tables(bucket, io["tables"].shape[1], num_blocks))
    return replay_ms(graph.replay)


@torch.inference_mode()  # the graphs' static tensors are inference tensors
def first_forward_ms(proposer, b: int, num_blocks: int) -> float:
    """The draft's first forward as the step runs it: ``FirstForward``'s captured graph for ``b`` requests of k + 2
    tokens at ``CONTEXT`` positions (every row real), writing to the null slot."""
    first = proposer.first
    bucket = proposer.chain.bucket(b)
    graph = first.graph(bucket)
    v, q = first.views(bucket), first.q
    v["ids"].fill_(7)
    v["positions"].copy_(torch.arange(CONTEXT, CONTEXT + q).repeat(bucket))
    v["slots"].zero_()
    v["seq_lens"].fill_(CONTEXT + q)
    v["query_start"].copy_(torch.arange(bucket + 1, dtype=torch.int32) * q)
    v["tables"].copy_(replay_tables(bucket, v["tables"].shape[1], num_blocks))
    v["last_rows"].copy_(torch.arange(bucket) * q + q - 1)
    return replay_ms(graph.replay)


@torch.inference_mode()
def eager_forward_ms(proposer, b: int, n: int = 30) -> float:
    """For reference: the draft's one-token forward for ``b`` requests at ``CONTEXT`` positions, eager."""
    from tokenleap_draft.forward import Run, paged_forward

    blocks = list(range(1, (CONTEXT + 16) // 16 + 2))
    runs = [Run([7], CONTEXT, blocks) for _ in range(b)]

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


def step_ms(llm: LLM, b: int) -> tuple[float, int]:
    """Median wall time of an engine step generating 48 tokens for ``b`` requests (the first 4 steps left out)."""
    engine = llm.engine
    times: list[float] = []
    inner = engine.step

    def timed():
        t0 = time.perf_counter()
        out = inner()
        times.append(time.perf_counter() - t0)
        return out

    engine.step = timed
    try:
        prompts = [{"prompt_token_ids": [1000 + 17 * i + j for j in range(128)]} for i in range(b)]
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=48, ignore_eos=True), use_tqdm=False)
    finally:
        engine.step = inner
    return statistics.median(times[4:]) * 1e3, len(times)


def measure_batch(llm: LLM, b: int, k: int, floor_ms: float, row: dict) -> None:
    """Fills ``row`` with the batch's numbers, printing each as it comes (a failure keeps what came before)."""
    proposer = llm.engine.driver.proposer
    num_blocks = llm.engine.blocks.num_blocks
    row["step_ms"], steps = step_ms(llm, b)
    row["graphs_used"] = {"first_forward": proposer.first.captured(), "chain": sorted(proposer.chain._graphs)}
    log(f"batch {b}: step {row['step_ms']:.2f} ms (median of {steps} steps); graphs captured in generation: "
        f"{row['graphs_used']}")
    row["first_forward_ms"] = first_forward_ms(proposer, b, num_blocks)
    log(f"batch {b}: draft first forward (graph, {proposer.first.q} rows a request) {row['first_forward_ms']:.3f} "
        f"ms = {row['first_forward_ms'] / floor_ms:.2f}x floor")
    row["chain_step_ms"] = chain_step_ms(proposer, b, num_blocks)
    log(f"batch {b}: draft one-token decode forward (graph) {row['chain_step_ms']:.3f} ms = "
        f"{row['chain_step_ms'] / floor_ms:.2f}x floor")
    row["verify_ms"] = graph_replay_ms(llm, b, 1 + k)
    log(f"batch {b}: target verify forward (graph, 1 + k = {1 + k}) {row['verify_ms']:.3f} ms")
    row["decode_ms"] = graph_replay_ms(llm, b, 1)
    log(f"batch {b}: target decode forward (graph) {row['decode_ms']:.3f} ms")
    row["parts_ms"] = row["first_forward_ms"] + (k - 1) * row["chain_step_ms"] + row["verify_ms"]
    row["step_over_parts"] = row["step_ms"] / row["parts_ms"]
    row["k_decode_parts_ms"] = k * row["chain_step_ms"] + row["verify_ms"]
    row["step_over_k_decode_parts"] = row["step_ms"] / row["k_decode_parts_ms"]
    row["draft_over_floor"] = row["chain_step_ms"] / floor_ms
    row["first_over_floor"] = row["first_forward_ms"] / floor_ms
    row["implied_speedup"] = {str(a): (1 - a ** (k + 1)) / (1 - a) * row["decode_ms"] / row["step_ms"]
                              for a in (0.6, 0.7, 0.8)}
    log(f"batch {b}: step {row['step_ms']:.2f} ms; parts {row['first_forward_ms']:.3f} (first) + {k - 1} x "
        f"{row['chain_step_ms']:.3f} (draft decode) + {row['verify_ms']:.3f} (verify) = {row['parts_ms']:.2f} ms -> "
        f"{row['step_over_parts']:.2f}x; with {k} x draft decode: {row['k_decode_parts_ms']:.2f} ms -> "
        f"{row['step_over_k_decode_parts']:.2f}x; draft decode forward {row['draft_over_floor']:.2f}x its floor; "
        "implied speedup at a = 0.6/0.7/0.8: " + " / ".join(f"{v:.2f}x" for v in row["implied_speedup"].values()))
    row["eager_forward_ms"] = eager_forward_ms(proposer, b)
    log(f"batch {b}: (reference, not in parts) draft one-token forward eager {row['eager_forward_ms']:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--out", default=None)
    parser.add_argument("--host-drafting", action="store_true",
                        help="async scheduling off: the draft model drafts on the host between steps (by default "
                             "it drafts on the device, inside the verify graph)")
    args = parser.parse_args()
    k = args.k
    out = Path(args.out) if args.out else None
    bw = bandwidth_tb_s()
    target, draft = write_config(LLAMA3_8B, "llama3-8b-shape"), write_config(LLAMA32_1B, "llama32-1b-shape")
    llm = LLM(target, load_format="dummy", dtype="bfloat16", max_model_len=2048, disable_log_stats=True,
              max_num_seqs=16, async_scheduling=not args.host_drafting, speculative_config={"method": "draft_model", "model": draft, "num_speculative_tokens": k,
                                                   "draft_load_format": "dummy"})
    proposer = llm.engine.driver.proposer
    draft_bytes = sum(p.numel() * p.element_size() for p in proposer.model.parameters())
    floor_ms = draft_bytes / bw / 1e9
    results = {"device": torch.cuda.get_device_name(), "bandwidth_tb_s": bw, "k": k, "draft_weight_bytes": draft_bytes,
               "drafting": "host" if args.host_drafting else "device",
               "draft_floor_ms": floor_ms, "context": CONTEXT, "batches": {}}
    log(f"{results['device']}: copy bandwidth {bw:.2f} TB/s; draft weights {draft_bytes / 1e9:.2f} GB, floor "
        f"{floor_ms:.3f} ms")
    for b in [int(x) for x in args.batches.split(",")]:
        row: dict = {}
        results["batches"][str(b)] = row
        try:
            measure_batch(llm, b, k, floor_ms, row)
        except Exception as e:  # keep the other batch sizes and what this one measured
            row["error"] = repr(e)
            log(f"batch {b}: FAILED: {e!r}")
            traceback.print_exc()
        if out is not None:
            out.write_text(json.dumps(results, indent=2))
    if out is not None:
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
