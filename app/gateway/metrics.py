"""The gateway's Prometheus metrics, kept in memory, written in the text exposition format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from app.analytics.outcomes import outcome
from app.common.prometheus import Histogram, Labels, labels_text, number

# Seconds: from a cache hit (well under a ms) to long CPU generations.
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOTAL_BUCKETS_S = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
TPS_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)
# The label for values that came from a client and name nothing Herd serves.
UNKNOWN_LABEL = "unknown"


class GatewayMetrics:
    """Counters and histograms fed by the proxy; gauges are read at scrape time."""

    def __init__(self) -> None:
        self.requests: Counter[Labels] = Counter()
        self.cache_hits: Counter[Labels] = Counter()
        self.upstream_errors: Counter[Labels] = Counter()
        self.unauthorized = 0
        self.ttft = Histogram(TTFT_BUCKETS_S)
        self.total = Histogram(TOTAL_BUCKETS_S)
        self.tokens_per_second = Histogram(TPS_BUCKETS)

    def count_request(
        self,
        alias: str,
        model: str,
        status: str,
        http_status: int | None,
        traffic_class: str,
        ttft_ms: float | None,
        total_ms: float | None,
        tokens_per_second: float | None,
    ) -> None:
        """Count one call. Its outcome and the latencies observed are those the metric
        catalog counts (every call with a time, whatever its outcome), so a Grafana panel
        filtered by traffic class reads as the dashboard's tile does."""
        ended = outcome(status, http_status).value
        self.requests[
            (
                ("alias", alias),
                ("model", model),
                ("outcome", ended),
                ("status", status),
                ("traffic_class", traffic_class),
            )
        ] += 1
        labels = (("alias", alias), ("model", model), ("traffic_class", traffic_class))
        if ttft_ms is not None:
            self.ttft.observe(labels, ttft_ms / 1000)
        if total_ms is not None:
            self.total.observe(labels, total_ms / 1000)
        if tokens_per_second:
            self.tokens_per_second.observe(labels, tokens_per_second)

    def count_cache_hit(self, alias: str) -> None:
        self.cache_hits[(("alias", alias),)] += 1

    def count_upstream_error(self, worker_id: int, kind: str) -> None:
        self.upstream_errors[(("worker", str(worker_id)), ("kind", kind))] += 1

    def render(self, gauges: Sequence[tuple[str, str, float]]) -> str:
        """The exposition text; gauges are (name, help, value) read by the caller now."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        def counter(name: str, help_text: str, values: Counter[Labels]) -> None:
            family(name, "counter", help_text)
            lines.extend(f"{name}{labels_text(k)} {n}" for k, n in sorted(values.items()))

        counter(
            "herd_gateway_requests_total",
            "Calls by alias, model served, outcome (ok, server_error, client_error, cancelled), "
            "status and traffic class (live, batch).",
            self.requests,
        )
        counter("herd_gateway_cache_hits_total", "Calls answered from the cache.", self.cache_hits)
        counter(
            "herd_gateway_upstream_errors_total",
            "Worker failures by worker and kind (connect, timeout, status, broken, refused).",
            self.upstream_errors,
        )
        family("herd_gateway_unauthorized_total", "counter", "Calls refused for a missing key.")
        lines.append(f"herd_gateway_unauthorized_total {self.unauthorized}")
        family("herd_gateway_ttft_seconds", "histogram", "Time to first token seen by clients.")
        lines.extend(self.ttft.lines("herd_gateway_ttft_seconds"))
        family("herd_gateway_request_duration_seconds", "histogram", "Total time per call.")
        lines.extend(self.total.lines("herd_gateway_request_duration_seconds"))
        family("herd_gateway_tokens_per_second", "histogram", "Decode rate per call.")
        lines.extend(self.tokens_per_second.lines("herd_gateway_tokens_per_second"))
        for name, help_text, value in gauges:
            family(name, "gauge", help_text)
            lines.append(f"{name} {number(value)}")
        return "\n".join(lines) + "\n"
