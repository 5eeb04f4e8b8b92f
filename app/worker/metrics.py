"""The worker's Prometheus metrics, kept in memory and written in the text exposition format.

Small enough to write by hand: counters with labels, gauges read at scrape time from the
engine, and histograms with fixed buckets.
"""

from __future__ import annotations

import threading
from collections import Counter

from app.common.prometheus import Histogram, escape
from app.engine.events import Finished
from app.worker.state import WorkerState

# Seconds. Time to first token spans prompt processing on CPU up to long queues.
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds between output tokens: GPU decode is a few ms, big models on CPU take 100s of ms.
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
QUEUE_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class WorkerMetrics:
    """Counters and histograms fed by the HTTP handlers; render() adds live gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # Prompt-lookup draft tokens decoded, and those confirmed (engine/drafting.py).
        self.drafted_tokens = 0
        self.accepted_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS_S, always=[()])
        self.tpot = Histogram(TPOT_BUCKETS_S, always=[()])
        self.queue = Histogram(QUEUE_BUCKETS_S, always=[()])

    def count_request(self, endpoint: str, outcome: str) -> None:
        """outcome: ok, cancelled, rejected (429), invalid (4xx), error (5xx or mid-stream)."""
        with self._lock:
            self.requests[(endpoint, outcome)] += 1

    def observe(self, finished: Finished) -> None:
        timings = finished.timings
        with self._lock:
            self.prompt_tokens += finished.usage.prompt_tokens
            self.completion_tokens += finished.usage.completion_tokens
            self.drafted_tokens += finished.usage.drafted_tokens
            self.accepted_tokens += finished.usage.accepted_tokens
            self.queue.observe((), timings.queue_ms / 1000)
            if timings.ttft_ms is not None and finished.usage.completion_tokens > 0:
                self.ttft.observe((), timings.ttft_ms / 1000)
            if timings.time_per_output_token_ms is not None:
                self.tpot.observe((), timings.time_per_output_token_ms / 1000)

    def render(self, state: WorkerState) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        engine = state.engine
        stats = engine.stats() if engine is not None else None
        with self._lock:
            family("herd_worker_requests_total", "counter", "Requests by endpoint and outcome.")
            for (endpoint, outcome), n in sorted(self.requests.items()):
                lines.append(
                    f'herd_worker_requests_total{{endpoint="{escape(endpoint)}",'
                    f'outcome="{escape(outcome)}"}} {n}'
                )
            family("herd_worker_prompt_tokens_total", "counter", "Prompt tokens processed.")
            lines.append(f"herd_worker_prompt_tokens_total {self.prompt_tokens}")
            family("herd_worker_completion_tokens_total", "counter", "Completion tokens generated.")
            lines.append(f"herd_worker_completion_tokens_total {self.completion_tokens}")
            # Their ratio is the acceptance rate of prompt-lookup decoding.
            family(
                "herd_worker_draft_tokens_total",
                "counter",
                "Prompt-lookup draft tokens decoded to be verified.",
            )
            lines.append(f"herd_worker_draft_tokens_total {self.drafted_tokens}")
            family(
                "herd_worker_draft_accepted_tokens_total",
                "counter",
                "Prompt-lookup draft tokens the sampler confirmed (output without a decode).",
            )
            lines.append(f"herd_worker_draft_accepted_tokens_total {self.accepted_tokens}")
            family("herd_worker_ttft_seconds", "histogram", "Time to first token, queue included.")
            lines.extend(self.ttft.lines("herd_worker_ttft_seconds"))
            family(
                "herd_worker_time_per_output_token_seconds",
                "histogram",
                "Mean time between output tokens of a request, after the first.",
            )
            lines.extend(self.tpot.lines("herd_worker_time_per_output_token_seconds"))
            family("herd_worker_queue_seconds", "histogram", "Time waiting for a free slot.")
            lines.extend(self.queue.lines("herd_worker_queue_seconds"))
        family("herd_worker_ready", "gauge", "1 when the model is loaded and serving.")
        lines.append(f"herd_worker_ready {1 if state.status == 'ready' else 0}")
        family("herd_worker_slots_total", "gauge", "Generation slots.")
        lines.append(f"herd_worker_slots_total {stats.slots_total if stats else 0}")
        family("herd_worker_slots_busy", "gauge", "Slots generating now.")
        lines.append(f"herd_worker_slots_busy {stats.slots_busy if stats else 0}")
        family("herd_worker_queue_length", "gauge", "Requests waiting for a slot.")
        lines.append(f"herd_worker_queue_length {stats.queue_length if stats else 0}")
        # Of the two above, what batch requests (X-Herd-Priority: batch) hold; the rest is live.
        family("herd_worker_batch_slots_busy", "gauge", "Slots generating batch requests now.")
        lines.append(f"herd_worker_batch_slots_busy {stats.batch_busy if stats else 0}")
        family("herd_worker_batch_queue_length", "gauge", "Batch requests waiting for a slot.")
        lines.append(f"herd_worker_batch_queue_length {stats.batch_waiting if stats else 0}")
        family(
            "herd_worker_preemptions_total",
            "counter",
            "Batch requests that gave their slot to an interactive one (and resumed later).",
        )
        lines.append(f"herd_worker_preemptions_total {stats.preemptions if stats else 0}")
        # Counted when a generation starts (cancelled ones too), unlike the per-finished
        # herd_worker_prompt_tokens_total: their ratio is the prefix cache's hit rate.
        family(
            "herd_worker_started_prompt_tokens_total",
            "counter",
            "Prompt tokens of started generations.",
        )
        lines.append(
            f"herd_worker_started_prompt_tokens_total {stats.prompt_tokens if stats else 0}"
        )
        family(
            "herd_worker_cached_prompt_tokens_total",
            "counter",
            "Prompt tokens of started generations taken from a reused KV prefix, not decoded.",
        )
        cached = stats.cached_prompt_tokens if stats else 0
        lines.append(f"herd_worker_cached_prompt_tokens_total {cached}")
        return "\n".join(lines) + "\n"
