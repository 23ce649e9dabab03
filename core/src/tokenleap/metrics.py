"""Engine metrics as vLLM's metrics reader exposes them: Counter, Gauge, Vector and Histogram objects
with a ``name`` and a ``value`` / ``values``."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from tokenleap.outputs import SpecDecodeStats

PREFIX = "tokenleap:"


@dataclass
class Metric:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Counter(Metric):
    value: int = 0


@dataclass
class Gauge(Metric):
    value: float = 0.0


@dataclass
class Vector(Metric):
    values: list[int] = field(default_factory=list)


@dataclass
class Histogram(Metric):
    buckets: dict[str, int] = field(default_factory=dict)  # upper bound -> cumulative count
    count: int = 0
    sum: float = 0.0


class HistogramAccumulator:
    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def snapshot(self, name: str) -> Histogram:
        cumulative, buckets = 0, {}
        for bound, c in zip([*map(str, self.bounds), "+Inf"], self.counts):
            cumulative += c
            buckets[bound] = cumulative
        return Histogram(name=name, buckets=buckets, count=self.count, sum=self.sum)


@dataclass
class EngineCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_steps: int = 0
    num_preemptions: int = 0
    finished: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0, "abort": 0})
    spec: SpecDecodeStats = field(default_factory=SpecDecodeStats)
    ttft: HistogramAccumulator = field(
        default_factory=lambda: HistogramAccumulator([0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
    )
    e2e: HistogramAccumulator = field(
        default_factory=lambda: HistogramAccumulator([0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300])
    )

    def snapshot(self, running: int, waiting: int, kv_usage: float, prefix_queries: int, prefix_hits: int):
        s = self.spec
        out: list[Metric] = [
            Counter(PREFIX + "prompt_tokens", value=self.prompt_tokens),
            Counter(PREFIX + "generation_tokens", value=self.generation_tokens),
            Counter(PREFIX + "num_preemptions", value=self.num_preemptions),
            Counter(PREFIX + "prefix_cache_queries", value=prefix_queries),
            Counter(PREFIX + "prefix_cache_hits", value=prefix_hits),
            Gauge(PREFIX + "num_requests_running", value=running),
            Gauge(PREFIX + "num_requests_waiting", value=waiting),
            Gauge(PREFIX + "kv_cache_usage_perc", value=kv_usage),
            Counter(PREFIX + "spec_decode_num_drafts", value=s.num_drafts),
            Counter(PREFIX + "spec_decode_num_draft_tokens", value=s.num_draft_tokens),
            Counter(PREFIX + "spec_decode_num_accepted_tokens", value=s.num_accepted_tokens),
            Vector(PREFIX + "spec_decode_num_accepted_tokens_per_pos", values=list(s.num_accepted_tokens_per_pos)),
            self.ttft.snapshot(PREFIX + "time_to_first_token_seconds"),
            self.e2e.snapshot(PREFIX + "e2e_request_latency_seconds"),
        ]
        for reason, n in self.finished.items():
            out.append(Counter(PREFIX + "request_success", labels={"finished_reason": reason}, value=n))
        return out
