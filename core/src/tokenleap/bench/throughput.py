"""Offline throughput: all prompts submitted at once in one ``llm.generate`` call, so the scheduler
batches them continuously (up to ``max_num_seqs`` / ``max_num_batched_tokens`` per step).

Figures: ``requests_per_s`` = prompts / elapsed; ``output_tokens_per_s`` = generated tokens / elapsed;
``total_tokens_per_s`` = (prompt + generated tokens) / elapsed, where elapsed is the wall time of the
generate call. ``acceptance`` is speculative-decoding acceptance over that call (None without
speculation). A short warm-up request runs first unless ``warmup=False``; it is not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tokenleap.bench import (
    AcceptanceStats,
    BenchResult,
    acceptance_between,
    acceptance_snapshot,
    percentile,
    speculation_enabled,
)
from tokenleap.sampling_params import SamplingParams


@dataclass
class ThroughputResult(BenchResult):
    num_prompts: int
    output_len: int  # max_tokens of every request (exact when ignore_eos)
    elapsed_s: float
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    total_input_tokens: int
    total_output_tokens: int
    mean_input_len: float
    mean_output_len: float
    median_ttft_ms: float
    acceptance: AcceptanceStats | None = None


def run_throughput(
    llm: Any,
    prompts: list[Any],
    output_len: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    ignore_eos: bool = True,
    warmup: bool = True,
    use_tqdm: bool = True,
) -> ThroughputResult:
    """Generate ``output_len`` tokens for every prompt in one call and measure rates."""
    if not prompts:
        raise ValueError("run_throughput needs at least one prompt")
    if output_len < 1:
        raise ValueError(f"output_len must be >= 1, got {output_len}")
    params = SamplingParams(
        max_tokens=output_len, temperature=temperature, top_p=top_p, top_k=top_k, ignore_eos=ignore_eos
    )
    if warmup:
        llm.generate(
            prompts[:1], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True), use_tqdm=False
        )
    before = acceptance_snapshot(llm.get_metrics())
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=use_tqdm)
    elapsed = time.perf_counter() - start
    after = acceptance_snapshot(llm.get_metrics())

    n_in = sum(len(o.prompt_token_ids) for o in outputs)
    n_out = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    ttfts = [
        (o.metrics.first_token_time - o.metrics.arrival_time) * 1e3
        for o in outputs
        if o.metrics is not None and o.metrics.first_token_time is not None
    ]
    return ThroughputResult(
        num_prompts=len(prompts),
        output_len=output_len,
        elapsed_s=elapsed,
        requests_per_s=len(prompts) / elapsed,
        output_tokens_per_s=n_out / elapsed,
        total_tokens_per_s=(n_in + n_out) / elapsed,
        total_input_tokens=n_in,
        total_output_tokens=n_out,
        mean_input_len=n_in / len(outputs),
        mean_output_len=n_out / len(outputs),
        median_ttft_ms=percentile(ttfts, 50),
        acceptance=acceptance_between(before, after) if speculation_enabled(llm) else None,
    )
