"""``/metrics``: the engine's metrics (``LLM.get_metrics``) in Prometheus text format, read at scrape time,
plus the server's own per-request latency histograms."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from tokenleap import metrics as M

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _prom_name(name: str) -> str:
    return name.replace(":", "_")


class EngineCollector:
    """Turns the engine's Counter / Gauge / Vector / Histogram list into metric families. Vectors (acceptance
    per draft position) become one counter with a ``position`` label."""

    def __init__(self, read: Callable[[], list[M.Metric]]) -> None:
        self.read = read

    def collect(self):
        for m in self.read():
            name, labels = _prom_name(m.name), dict(m.labels)
            keys = sorted(labels)
            if isinstance(m, M.Counter):
                fam = CounterMetricFamily(name, f"tokenleap engine counter {m.name}", labels=keys)
                fam.add_metric([labels[k] for k in keys], m.value)
            elif isinstance(m, M.Gauge):
                fam = GaugeMetricFamily(name, f"tokenleap engine gauge {m.name}", labels=keys)
                fam.add_metric([labels[k] for k in keys], m.value)
            elif isinstance(m, M.Vector):
                fam = CounterMetricFamily(name, f"tokenleap engine counter {m.name}, by draft position",
                                          labels=["position"])
                for i, v in enumerate(m.values):
                    fam.add_metric([str(i)], v)
            elif isinstance(m, M.Histogram):
                fam = HistogramMetricFamily(name, f"tokenleap engine histogram {m.name}")
                fam.add_metric([], [(b, c) for b, c in m.buckets.items()], sum_value=m.sum)
            else:
                continue
            yield fam


class ServerMetrics:
    """The registry behind ``/metrics`` (one per app: several servers in one process don't share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._engine: list[M.Metric] = []
        self.registry.register(EngineCollector(lambda: self._engine))
        kw = dict(registry=self.registry, buckets=LATENCY_BUCKETS)
        self.request_latency = Histogram("tokenleap_server_request_latency_seconds",
                                         "time from request received to its last byte", ["endpoint"], **kw)
        self.ttft = Histogram("tokenleap_server_time_to_first_token_seconds",
                              "time from request received to the first streamed token", ["endpoint"], **kw)
        self.itl = Histogram("tokenleap_server_inter_token_latency_seconds",
                             "time between two streamed chunks of one completion", ["endpoint"], **kw)

    def render(self, engine_metrics: list[M.Metric]) -> bytes:
        """The text exposition, with the engine's metrics as read (between two steps) by the caller."""
        self._engine = engine_metrics
        return generate_latest(self.registry)
