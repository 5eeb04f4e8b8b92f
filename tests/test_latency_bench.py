"""The latency benchmark's pure parts: the seeded workload and schedules, the per-run
summary, the Herd / llama-server ratios and their verdicts, the llama-server command.

The benchmark itself (bench/latency_bench.py) runs outside CI; these check that what it
reports is computed as its text says."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from itertools import pairwise
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import engine_bench
import latency_bench as lb
import latency_report as lr


def test_draw_calls_is_seeded_and_within_ranges() -> None:
    calls = lb.draw_calls(7, 300, (20, 400), (16, 96))
    assert calls == lb.draw_calls(7, 300, (20, 400), (16, 96))
    assert calls != lb.draw_calls(8, 300, (20, 400), (16, 96))
    assert all(20 <= c.prompt_words <= 400 and 16 <= c.max_tokens <= 96 for c in calls)
    assert all(len(c.text.split()) == c.prompt_words for c in calls)
    # Uniform over the range: both ends are reached and the mean sits in the middle.
    assert min(c.prompt_words for c in calls) < 40 and max(c.prompt_words for c in calls) > 380
    assert 180 < statistics.mean(c.prompt_words for c in calls) < 240
    # Distinct prompts: a cached prefix of one call says nothing about the next.
    assert len({c.text for c in calls}) == len(calls)


def test_poisson_arrivals_rate_order_and_stretch() -> None:
    arrivals = lb.poisson_arrivals(10.0, 1000.0, 3)
    assert arrivals == sorted(arrivals) and arrivals[0] > 0 and arrivals[-1] < 1000.0
    assert abs(len(arrivals) - 10_000) < 300  # Poisson: sd 100
    gaps = [b - a for a, b in pairwise(arrivals)]
    # Exponential gaps: the sd equals the mean (a fixed-rate schedule would have sd 0).
    assert statistics.pstdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.05)
    # One seed at twice the rate: the same schedule, twice as dense.
    fast = lb.poisson_arrivals(20.0, 500.0, 3)
    assert fast == pytest.approx([a / 2 for a in arrivals[: len(fast)]])
    assert lb.poisson_arrivals(10.0, 1000.0, 4) != arrivals
    assert lb.poisson_arrivals(0.0, 10.0, 3) == []


def test_summarize_measures_from_the_scheduled_arrival() -> None:
    outcomes = [
        lb.Outcome(scheduled_s=1.0, token_at=[1.1, 1.2, 1.4]),
        lb.Outcome(scheduled_s=2.0, token_at=[2.3, 2.4]),
        lb.Outcome(scheduled_s=3.0, error="HTTPStatusError: 503"),
    ]
    s = lb.summarize(outcomes)
    assert s["ttft_p50_ms"] == pytest.approx(100.0)  # engine_bench.pct: nearest rank
    assert s["ttft_p99_ms"] == pytest.approx(300.0)
    assert s["itl_p50_ms"] == pytest.approx(100.0) and s["itl_p99_ms"] == pytest.approx(200.0)
    assert s["calls"] == 3 and s["errors"] == 1
    # Over the run until its last token (2.4 s): 5 tokens, 2 calls done.
    assert s["tokens_per_s"] == pytest.approx(5 / 2.4)
    assert s["calls_per_s"] == pytest.approx(2 / 2.4)
    # In a window of 2.35 s: the tokens before it, and only the call finished inside it.
    w = lb.summarize(outcomes, 2.35)
    assert w["tokens_per_s"] == pytest.approx(4 / 2.35)
    assert w["calls_per_s"] == pytest.approx(1 / 2.35)
    # Chunks that carry several tokens (accepted drafts): the answer's length counts.
    outcomes[0].tokens = 6  # 6 tokens in 3 chunks
    assert lb.summarize(outcomes)["tokens_per_s"] == pytest.approx(8 / 2.4)
    assert lb.summarize(outcomes, 2.35)["tokens_per_s"] == pytest.approx(7 / 2.35)


def test_summarize_of_nothing_is_nan_not_a_crash() -> None:
    s = lb.summarize([lb.Outcome(scheduled_s=0.0, error="ConnectError")])
    assert math.isnan(s["ttft_p50_ms"]) and s["errors"] == 1


def test_ratio_of_medians_beside_median_of_ratios() -> None:
    r = lr.ratio([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert (r.of_medians, r.median_of_ratios, r.low, r.high) == (1.0, 1.0, 0.5, 1.5)
    # They can disagree: here the medians say 4x, the per-round ratios 1x.
    r = lr.ratio([1.0, 4.0, 4.0], [1.0, 1.0, 8.0])
    assert r.of_medians == 4.0 and r.median_of_ratios == 1.0 and (r.low, r.high) == (0.5, 4.0)
    assert math.isnan(lr.ratio([], []).of_medians)
    assert math.isnan(lr.ratio([1.0], [1.0, 2.0]).median_of_ratios)


def test_verdict_misses_when_either_ratio_misses() -> None:
    assert lr.verdict(lr.Ratio(0.9, 0.95, 0.8, 1.1), 1.0, higher_is_better=False) == "met"
    assert lr.verdict(lr.Ratio(1.1, 0.95, 0.8, 1.2), 1.0, higher_is_better=False) == "missed"
    assert lr.verdict(lr.Ratio(0.9, 1.05, 0.8, 1.2), 1.0, higher_is_better=False) == "missed"
    assert lr.verdict(lr.Ratio(1.0, 1.02, 0.9, 1.1), 1.0, higher_is_better=True) == "met"
    assert lr.verdict(lr.Ratio(1.1, 0.99, 0.9, 1.1), 1.0, higher_is_better=True) == "missed"
    assert lr.verdict(lr.Ratio(math.nan, 0.5, 0.5, 0.5), 1.0, higher_is_better=False) == "missed"


def test_targets_are_the_issues() -> None:
    got = lr.targets([0.5, 0.7, 0.9])
    load = {(lv, m) for phase, lv, m, bound, higher in got if phase == "load"}
    assert load == {(lv, m) for lv in (0.5, 0.7, 0.9) for m in ("ttft_p50_ms", "ttft_p95_ms")} | {
        (0.7, "ttft_p99_ms")
    }
    assert ("saturation", None, "tokens_per_s", 1.0, True) in got
    assert all(bound == 1.0 and not higher for phase, _, _, bound, higher in got if phase == "load")


def test_server_order_alternates_by_round() -> None:
    assert lb.order(0) == ["herd", "llama-server"] and lb.order(1) == ["llama-server", "herd"]
    assert lb.order(2) == lb.order(0)


def test_llama_server_argv_matches_herds_settings() -> None:
    args = argparse.Namespace(
        llama_server="/x/llama-server", model="/m.gguf", threads=2, parallel=4, n_ctx=2048,
        flash_attn="auto", n_gpu_layers=-1,
    )  # fmt: skip
    argv = lb.llama_server_argv(args, 8123)
    joined = " ".join(argv)
    # Herd's own choice of repacked CPU buffers (off on this AMX VM, where they crash).
    assert ("--no-repack" in argv) == (not engine_bench.repack_allowed())
    assert "-t 2 -tb 2" in joined and "--parallel 4" in joined and "-c 8192" in joined
    assert "-fa auto" in joined and "-ngl all" in joined
    args.n_gpu_layers = 0
    assert "-ngl 0" in " ".join(lb.llama_server_argv(args, 8123))


def fake_result(herd_ttft: float) -> dict[str, object]:
    """Two rounds of runs where llama-server's TTFT is 100 ms and Herd's herd_ttft."""

    def run(ttft: float, tps: float) -> dict[str, float]:
        m = {f"ttft_p{q}_ms": ttft for q in (50, 95, 99)}
        m |= {f"itl_p{q}_ms": 20.0 for q in (50, 95, 99)}
        return m | {"tokens_per_s": tps, "calls_per_s": 2.0, "calls": 40.0, "errors": 0.0}

    servers = {"herd": (herd_ttft, 110.0), "llama-server": (100.0, 100.0)}
    per_level = {
        s: [run(t, p) | {"rate": 1.0}, run(t, p) | {"rate": 1.0}] for s, (t, p) in servers.items()
    }
    return {
        "capacity": {"herd": 2.2, "llama-server": 2.0},
        "saturation": {s: [run(t, p), run(t, p)] for s, (t, p) in servers.items()},
        "runs": {v: {str(lv): per_level for lv in (0.5, 0.7, 0.9)} for v in lr.VIEWS},
        "streams": {"8": {s: [run(t, p * 2), run(t, p * 2)] for s, (t, p) in servers.items()}},
        "vram_mib": {"herd": None, "llama-server": None},
    }


def test_markdown_block_states_command_machine_and_verdicts() -> None:
    args = lb.parse_args(["--model", "/m/x.gguf", "--rounds", "2"])
    meta = {
        "command": "python bench/latency_bench.py --rounds 2",
        "machine": "AMD EPYC, 2 cores",
        "date": "2026-12-08 03:30",
        "commit": "abc1234",
        "load_start": "2.00",
        "load_end": "3.00",
        "llama_server": "version: 1 (x)",
        "estimate": "VRAM 0 MiB, RAM 180 MiB",
    }
    text = lr.markdown(fake_result(90.0), args, meta)
    for needle in ("python bench/latency_bench.py --rounds 2", "AMD EPYC, 2 cores", "abc1234"):
        assert needle in text
    assert "2.00 at start, 3.00 at end" in text and "**missed**" not in text
    assert "| own 70% | ttft_p99_ms | 0.90x | 0.90x |" in text
    assert "| saturation (closed loop) | tokens_per_s | 1.10x |" in text
    assert "tokens/s at 8 streams: 1.10x (ratio of medians)" in text
    assert "| herd | 2.20 (110.0, 110.0) |" not in text  # capacity is calls/s, not tokens/s
    assert "| herd | 2.20 (2.00, 2.00) | 110.0 | 220.0 | - |" in text
    slow = lr.markdown(fake_result(120.0), args, meta)
    row = "| common 50% | ttft_p50_ms | 1.20x | 1.20x | 1.20-1.20x | <= 1.0x | **missed** |"
    assert row in slow
    verdicts = lr.ratio_rows(fake_result(120.0), args.levels)[1]
    assert "own 90% ttft_p95_ms: missed" in verdicts
    assert "saturation (closed loop) tokens_per_s: met" in verdicts
