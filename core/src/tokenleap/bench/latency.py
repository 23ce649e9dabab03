"""Latency of one batch: the same ``batch_size`` prompts generated ``num_iters`` times, each to exactly
``output_len`` tokens (``ignore_eos=True``), after ``num_iters_warmup`` untimed runs.

Figures (all from the timed iterations only):

- ``latency_s``: wall time of one ``llm.generate`` call on the whole batch (median / p90 / mean).
- ``ms_per_output_token``: an iteration's latency / ``output_len``, in ms: the time the batch takes per
  decoded position, prefill included. This is the headline figure (median and p90 over iterations).
- ``tpot_ms`` (time per output token after the first): per request, (finished time - first token time)
  / (output tokens - 1), in ms; median and p90 over all requests of all iterations. Prefill excluded.
- ``ttft_ms``: per request, first token time - arrival time, in ms.
- ``output_tokens_per_s``: output tokens of all timed iterations / their summed latency.
- ``acceptance``: speculative-decoding acceptance over the timed iterations (None without speculation).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

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
class LatencyResult(BenchResult):
    batch_size: int
    output_len: int
    mean_input_len: float
    num_iters: int
    num_iters_warmup: int
    latencies_s: list[float]
    median_latency_s: float
    p90_latency_s: float
    mean_latency_s: float
    median_ms_per_output_token: float
    p90_ms_per_output_token: float
    median_tpot_ms: float
    p90_tpot_ms: float
    median_ttft_ms: float
    output_tokens_per_s: float
    total_output_tokens: int
    acceptance: AcceptanceStats | None = None


def run_latency(
    llm: Any,
    prompts: list[Any],
    output_len: int,
    *,
    num_iters: int = 10,
    num_iters_warmup: int = 2,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    ignore_eos: bool = True,
    use_tqdm: bool = True,
) -> LatencyResult:
    """Run the latency benchmark on ``llm`` with a batch of ``prompts`` (one generate call per iteration)."""
    if not prompts:
        raise ValueError("run_latency needs at least one prompt")
    if num_iters < 1 or num_iters_warmup < 0 or output_len < 1:
        raise ValueError(
            f"need num_iters >= 1, num_iters_warmup >= 0, output_len >= 1; got {num_iters}, "
            f"{num_iters_warmup}, {output_len}"
        )
    params = SamplingParams(
        max_tokens=output_len, temperature=temperature, top_p=top_p, top_k=top_k, ignore_eos=ignore_eos
    )
    for _ in tqdm(range(num_iters_warmup), desc="Warm-up", unit="iter", disable=not use_tqdm):
        llm.generate(prompts, params, use_tqdm=False)

    before = acceptance_snapshot(llm.get_metrics())
    latencies, tpots, ttfts = [], [], []
    total_tokens, input_lens = 0, []
    for _ in tqdm(range(num_iters), desc="Latency", unit="iter", disable=not use_tqdm):
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        latencies.append(time.perf_counter() - start)
        for out in outputs:
            input_lens.append(len(out.prompt_token_ids))
            for c in out.outputs:
                total_tokens += len(c.token_ids)
            m = out.metrics
            n = len(out.outputs[0].token_ids)
            if m is not None and m.first_token_time is not None:
                ttfts.append((m.first_token_time - m.arrival_time) * 1e3)
                if n > 1 and m.finished_time is not None:
                    tpots.append((m.finished_time - m.first_token_time) / (n - 1) * 1e3)
    after = acceptance_snapshot(llm.get_metrics())

    per_token = [lat / output_len * 1e3 for lat in latencies]
    return LatencyResult(
        batch_size=len(prompts),
        output_len=output_len,
        mean_input_len=statistics.fmean(input_lens),
        num_iters=num_iters,
        num_iters_warmup=num_iters_warmup,
        latencies_s=latencies,
        median_latency_s=statistics.median(latencies),
        p90_latency_s=percentile(latencies, 90),
        mean_latency_s=statistics.fmean(latencies),
        median_ms_per_output_token=statistics.median(per_token),
        p90_ms_per_output_token=percentile(per_token, 90),
        median_tpot_ms=percentile(tpots, 50),
        p90_tpot_ms=percentile(tpots, 90),
        median_ttft_ms=percentile(ttfts, 50),
        output_tokens_per_s=total_tokens / sum(latencies),
        total_output_tokens=total_tokens,
        acceptance=acceptance_between(before, after) if speculation_enabled(llm) else None,
    )
