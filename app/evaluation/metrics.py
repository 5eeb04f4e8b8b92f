"""The metrics an evaluation records, with their units and which way is better."""

from __future__ import annotations

import enum


class Metric(enum.StrEnum):
    SIZE = "size_bytes"
    RSS_PEAK = "rss_peak_bytes"
    RSS_ESTIMATE = "rss_estimate_bytes"
    RSS_ERROR = "rss_estimate_error_pct"
    # Only where layers are offloaded to a GPU that nvidia-smi reports on.
    VRAM_PEAK = "vram_peak_bytes"
    VRAM_ESTIMATE = "vram_estimate_bytes"
    VRAM_ERROR = "vram_estimate_error_pct"
    PREFILL = "prefill_tps"
    DECODE = "decode_tps"
    PERPLEXITY = "perplexity"
    REFERENCE_LOGLIK = "reference_loglik_per_token"


UNITS = {
    Metric.SIZE: "bytes",
    Metric.RSS_PEAK: "bytes",
    Metric.RSS_ESTIMATE: "bytes",
    Metric.RSS_ERROR: "%",
    Metric.VRAM_PEAK: "bytes",
    Metric.VRAM_ESTIMATE: "bytes",
    Metric.VRAM_ERROR: "%",
    Metric.PREFILL: "tokens/s",
    Metric.DECODE: "tokens/s",
    Metric.PERPLEXITY: "",
    Metric.REFERENCE_LOGLIK: "nats/token",
}
