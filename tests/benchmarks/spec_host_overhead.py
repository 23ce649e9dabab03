"""Host time of one engine step, by phase, for plain decoding and each speculative method, on a TINY random
target on the CPU (its compute is a few microseconds per op, so what is left is the host's own work: the
Python that a GPU step waits on). Not part of the test suite.

    PYTHONPATH=... python tests/benchmarks/spec_host_overhead.py [--batch 1 8] [--steps 60] [--profile mlp]

Methods: plain, ngram (k=5, host path: no device drafting on the CPU), mlp_speculator (k=3, random tiny
speculator), eagle3 (k=4, random tiny head). Greedy, ignore_eos, every request decoding (prefill steps are
left out). Decode / verify steps take the graphed path that CUDA takes (padded inputs staged in place, the
verification inside the forward, one read-back), its graphs run eagerly (``--eager``: the CPU's own path; no
device drafting either way). Each phase is the median over the measured steps of the wall time spent inside the engine's own
callables (wrapped); ``other`` is the rest of ``Engine.step``. ``--profile METHOD`` prints the top cProfile
entries of that method's measured steps (batch of the first ``--batch``).

Phases (microseconds per engine step):
  schedule       Scheduler.schedule
  inputs         ModelRunner.launch less the forward and the sampling (flat batch, metadata, uploads)
  forward        the target's forward (tiny: mostly torch dispatch; on CUDA a graph replay, a few us)
  sample         ModelRunner._sample (sampling batch, verify, the step's read-back)
  apply          Engine._apply less driver calls (append tokens, counters, prefix-cache blocks)
  drv.build      ProposerDriver.propose less proposer.propose (ProposeRequests, SamplingInfo, checks)
  propose        the proposer's own propose()
  verified       ProposerDriver.verified (on_verified)
  other          the rest of Engine.step (text, logging, retire)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.helpers

from tokenleap import LLM, SamplingParams  # noqa: E402
from tokenleap.engine.cuda_graphs import DecodeGraphs  # noqa: E402

from tests.helpers.eagle_heads import write_eagle3_head  # noqa: E402
from tests.helpers.tiny_heads import make_tiny_speculator  # noqa: E402
from tests.helpers.tiny_models import TINY_VOCAB, make_tiny_checkpoint  # noqa: E402

PHASES = ["schedule", "inputs", "forward", "sample", "apply", "drv.build", "propose", "verified", "other"]


def timed(acc: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[name] += time.perf_counter() - t0
    return wrapper


def instrument(llm: LLM) -> tuple[dict, callable]:
    """Wrap the engine's callables; returns (this step's accumulator, the wrapped step)."""
    eng = llm.engine
    cur: dict[str, float] = defaultdict(float)
    eng.scheduler.schedule = timed(cur, "schedule", eng.scheduler.schedule)
    launch = timed(cur, "launch", eng.runner.launch)

    def launch_noting_prefill(scheduled, *a, **kw):
        cur["_prefill"] += any(s.num_new_tokens > 1 for s in scheduled)
        return launch(scheduled, *a, **kw)

    eng.runner.launch = launch_noting_prefill
    eng.runner.model.forward = timed(cur, "forward", eng.runner.model.forward)
    if eng.runner.graphs is not None:  # the padded forward (segments of layers, not model.forward)
        eng.runner.graphs.replay_staged = timed(cur, "forward", eng.runner.graphs.replay_staged)
    eng.runner._sample = timed(cur, "sample", eng.runner._sample)
    eng._apply = timed(cur, "_apply", eng._apply)
    if eng.driver is not None:
        eng.driver.propose = timed(cur, "driver.propose", eng.driver.propose)
        eng.driver.verified = timed(cur, "verified", eng.driver.verified)
        eng.driver.proposer.propose = timed(cur, "propose", eng.driver.proposer.propose)
    eng.step = timed(cur, "step", eng.step)
    return cur, eng.step


def phases(cur: dict) -> dict[str, float]:
    out = {
        "schedule": cur["schedule"],
        "inputs": cur["launch"] - cur["forward"] - cur["sample"],
        "forward": cur["forward"],
        "sample": cur["sample"],
        "apply": cur["_apply"] - cur["driver.propose"] - cur["verified"],
        "drv.build": cur["driver.propose"] - cur["propose"],
        "propose": cur["propose"],
        "verified": cur["verified"],
    }
    out["other"] = cur["step"] - sum(out.values())
    out["step"] = cur["step"]
    return out


def build(folder: Path, method: str, batch: int, tmp: Path, padded: bool) -> LLM:
    kw = dict(max_model_len=512, max_num_seqs=batch, disable_log_stats=True, kv_cache_memory_bytes=16 << 20)
    if method == "ngram":
        kw["speculative_config"] = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4,
                                    "prompt_lookup_min": 1}
    elif method == "mlp":
        spec = make_tiny_speculator(tmp / "mlp", emb_dim=64, vocab_size=TINY_VOCAB, n_predict=3)
        kw["speculative_config"] = {"method": "mlp_speculator", "model": str(spec), "num_speculative_tokens": 3}
    elif method == "eagle3":
        head = tmp / "eagle3"
        if not head.exists():
            write_eagle3_head(head, 64, TINY_VOCAB, 96, seed=2, fmt="bin")
        kw["speculative_config"] = {"method": "eagle3", "model": str(head), "num_speculative_tokens": 4}
    llm = LLM(str(folder), **kw)
    if padded:  # decode / verify steps through the graphed path (as on CUDA), run eagerly
        eng = llm.engine
        eng.runner.graphs = DecodeGraphs(
            eng.model, eng.runner.kv_caches, eng.cfg.max_num_seqs, [1, 1 + eng.num_speculative_tokens],
            eng.runner.max_blocks_per_req, eng.max_model_len, eng.backend, eng.device, use_cuda_graphs=False,
            block_size=eng.cfg.block_size, hidden_state_layers=eng.runner.hidden_state_layers)
    return llm


def measure(llm: LLM, batch: int, steps: int, seed: int, profile: cProfile.Profile | None):
    """(median phases, mean tokens per request-step, per-step samples) over ``steps`` all-decode steps."""
    eng = llm.engine
    cur, step = instrument(llm)
    rng = random.Random(seed)
    sp = SamplingParams(temperature=0, max_tokens=steps + 8, ignore_eos=True)
    rows: list[dict[str, float]] = []
    tokens = 0
    rounds = 0
    while len(rows) < steps and rounds < 50:
        rounds += 1
        for _ in range(batch):
            # repetitive prompts, so that prompt lookup finds matches
            base = [rng.randrange(3, TINY_VOCAB) for _ in range(8)]
            for req in llm._make_requests([{"prompt_token_ids": base * 3}], [sp], None, None)[0]:
                eng.add_request(req)
        while eng.has_unfinished_requests() and len(rows) < steps:
            cur.clear()
            gen0 = eng.counters.generation_tokens
            if profile is not None:
                profile.enable()
            step()
            if profile is not None:
                profile.disable()
            if cur["_prefill"] or len(eng.scheduler.running) < batch:
                continue
            rows.append(phases(cur))
            tokens += eng.counters.generation_tokens - gen0
        for rid in list(eng.requests):
            eng.abort_request(rid)
    med = {p: statistics.median(r[p] for r in rows) * 1e6 for p in PHASES + ["step"]}
    return med, tokens / (len(rows) * batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=60, help="measured all-decode steps per configuration")
    ap.add_argument("--methods", nargs="+", default=["plain", "ngram", "mlp", "eagle3"])
    ap.add_argument("--profile", default=None, help="a method whose steps to cProfile (first batch size)")
    ap.add_argument("--eager", action="store_true",
                    help="decode / verify steps through the CPU's eager path (default: the graphed path run eagerly, "
                         "DecodeGraphs(use_cuda_graphs=False), the inputs and read-back the GPU's steps use)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        folder = make_tiny_checkpoint(tmp, "llama", initializer_range=0.3)
        print(f"{'method':<8} {'batch':>5} " + " ".join(f"{p:>9}" for p in PHASES) + f" {'step':>8} {'tok/req':>7}")
        for b in args.batch:
            for method in args.methods:
                llm = build(folder, method, b, tmp, not args.eager)
                measure(llm, b, 10, 1, None)  # warm-up
                prof = cProfile.Profile() if method == args.profile and b == args.batch[0] else None
                med, tps = measure(llm, b, args.steps, 2, prof)
                print(f"{method:<8} {b:>5} " + " ".join(f"{med[p]:>9.0f}" for p in PHASES)
                      + f" {med['step']:>8.0f} {tps:>7.2f}", flush=True)
                if prof is not None:
                    pstats.Stats(prof).sort_stats("cumulative").print_stats(r"tokenleap_eagle|attention_ref|fused_ref", 25)


if __name__ == "__main__":
    main()
