"""The latency benchmark's arithmetic and report: Herd / llama-server ratios over rounds,
issue 23's targets and their verdicts, and the markdown block for bench/RESULTS.md
(bench/latency_bench.py measures)."""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SERVERS = ("herd", "llama-server")
VIEWS = ("own", "common")


@dataclass(frozen=True)
class Ratio:
    """Herd / llama-server over rounds: ratio of the medians, median of the per-round
    ratios, and the per-round ratios' min and max."""

    of_medians: float
    median_of_ratios: float
    low: float
    high: float


def ratio(herd: list[float], anchor: list[float]) -> Ratio:
    """herd[i] and anchor[i] are round i's values of one metric."""
    nan = float("nan")
    if not herd or len(herd) != len(anchor):
        return Ratio(nan, nan, nan, nan)
    per_round = [h / a if a else nan for h, a in zip(herd, anchor, strict=True)]
    denom = statistics.median(anchor)
    return Ratio(
        statistics.median(herd) / denom if denom else nan,
        statistics.median(per_round),
        min(per_round),
        max(per_round),
    )


def verdict(r: Ratio, bound: float, higher_is_better: bool) -> str:
    """'met' only if both the ratio of medians and the median of ratios meet the bound
    (a NaN misses)."""
    both = (r.of_medians, r.median_of_ratios)
    ok = all(v >= bound for v in both) if higher_is_better else all(v <= bound for v in both)
    return "met" if ok else "missed"


Target = tuple[str, float | None, str, float, bool]


def targets(levels: list[float]) -> list[Target]:
    """Issue 23's targets as (phase, level, metric, bound, higher_is_better); level None is
    the saturation (capacity) phase."""
    out: list[Target] = []
    for level in levels:
        out.append(("load", level, "ttft_p50_ms", 1.0, False))
        out.append(("load", level, "ttft_p95_ms", 1.0, False))
        if round(level * 100) == 70:
            out.append(("load", level, "ttft_p99_ms", 1.0, False))
    out.append(("saturation", None, "tokens_per_s", 1.0, True))
    return out


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} if runs else {}


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"^Model name:\s*(.*)$", lscpu, re.MULTILINE)
    return f"{model.group(1).strip() if model else platform.processor()}, {os.cpu_count()} cores"


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:  # a `git archive` copy: the caller names the commit
        return os.environ.get("HERD_BENCH_COMMIT", "unknown (not a git checkout)")
    dirty = git("status", "--porcelain", "--", "app")
    return head + (" (uncommitted changes under app/)" if dirty else "")


def server_version(binary: str) -> str:
    """llama-server's own `--version` line (it prints it on stderr)."""
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    lines = (done.stderr + done.stdout).strip().splitlines()
    return next((x for x in lines if x.startswith("version")), "version unknown")


def fmt(v: float | None) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def three(m: dict[str, float], kind: str) -> str:
    return "/".join(fmt(m.get(f"{kind}_p{q}_ms")) for q in (50, 95, 99))


def load_tables(result: dict[str, Any], levels: list[float]) -> list[str]:
    lines = []
    for view in VIEWS:
        what = {"own": "its own capacity", "common": "the lower capacity (same calls/s)"}[view]
        lines += ["", f"Load: share of {what} ({view!r} view), median over rounds:", ""]
        lines += [
            "| load | server | calls/s offered | TTFT p50/p95/p99 ms | ITL p50/p95/p99 ms "
            "| tokens/s | calls/s | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for level in levels:
            for s, per in result["runs"][view][str(level)].items():
                m = median_run(per)
                errs = sum(int(x["errors"]) for x in per)
                lines.append(
                    f"| {level:.0%} | {s} | {m['rate']:.2f} | {three(m, 'ttft')} | "
                    f"{three(m, 'itl')} | {fmt(m['tokens_per_s'])} | {m['calls_per_s']:.2f} "
                    f"| {errs} |"
                )
    return lines


def ratio_rows(result: dict[str, Any], levels: list[float]) -> tuple[list[str], list[str]]:
    """The ratio table's rows and one verdict line per target and view."""
    rows, verdicts = [], []
    for view in VIEWS:
        for phase, level, metric, bound, higher in targets(levels):
            if phase == "saturation":
                if view == "common":
                    continue
                per, where = result["saturation"], "saturation (closed loop)"
            else:
                per, where = result["runs"][view][str(level)], f"{view} {level:.0%}"
            if not set(SERVERS) <= set(per):
                continue
            r = ratio([x[metric] for x in per["herd"]], [x[metric] for x in per["llama-server"]])
            v = verdict(r, bound, higher)
            rows.append(
                f"| {where} | {metric} | {r.of_medians:.2f}x | {r.median_of_ratios:.2f}x | "
                f"{r.low:.2f}-{r.high:.2f}x | {'>=' if higher else '<='} {bound:.1f}x | "
                f"{'**missed**' if v == 'missed' else 'met'} |"
            )
            verdicts.append(f"{where} {metric}: {v}")
    return rows, verdicts


def server_tables(result: dict[str, Any]) -> list[str]:
    """Capacity, tokens/s at N streams and VRAM, one row per server."""
    lines = [
        "| server | capacity calls/s (median; per round) | tokens/s at capacity |"
        + "".join(f" tokens/s, {n} streams |" for n in result["streams"])
        + " VRAM MiB (nvidia-smi) |",
        "|---|---:|---:|" + "---:|" * len(result["streams"]) + "---:|",
    ]
    for s, per in result["saturation"].items():
        rounds = ", ".join(f"{x['calls_per_s']:.2f}" for x in per)
        cells = [f"{result['capacity'][s]:.2f} ({rounds})", fmt(median_run(per)["tokens_per_s"])]
        cells += [fmt(median_run(p[s])["tokens_per_s"]) for p in result["streams"].values()]
        cells.append(fmt(result["vram_mib"].get(s)))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    for n, p in result["streams"].items():
        if set(SERVERS) <= set(p):
            r = ratio(
                [x["tokens_per_s"] for x in p["herd"]],
                [x["tokens_per_s"] for x in p["llama-server"]],
            )
            lines.append(
                f"\nHerd/llama-server tokens/s at {n} streams: {r.of_medians:.2f}x (ratio of "
                f"medians), {r.median_of_ratios:.2f}x (median of ratios), spread "
                f"{r.low:.2f}-{r.high:.2f}x."
            )
    return lines


def markdown(result: dict[str, Any], args: argparse.Namespace, meta: dict[str, str]) -> str:
    lines = [
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}; date {meta['date']} UTC; commit {meta['commit']}; "
        f"load average (1 min) {meta['load_start']} at start, {meta['load_end']} at end.",
        f"Model {Path(args.model).name}; {args.parallel} slots, {args.threads} threads, n_ctx "
        f"{args.n_ctx}/slot, flash attention {args.flash_attn} (llama-server's -fa; Herd keeps "
        f"llama.cpp's default), GPU layers {args.n_gpu_layers}; llama-server "
        f"{meta['llama_server']}. Prompts {args.prompt_words[0]}-{args.prompt_words[1]} words "
        f"(~tokens), answers {args.max_tokens[0]}-{args.max_tokens[1]} tokens, uniform, seed "
        f"{args.seed}; temperature 0, ignore_eos. {args.rounds} rounds interleaved (order "
        f"alternating), {args.duration:g} s of arrivals per load run, {args.capacity_duration:g} "
        f"s per closed-loop run. Herd's memory estimate: {meta['estimate']}.",
        "",
        *server_tables(result),
    ]
    if result["runs"]:
        lines += load_tables(result, args.levels)
    rows, _ = ratio_rows(result, args.levels if result["runs"] else [])
    if rows:
        lines += ["", "Herd / llama-server (issue 23's targets; missed when either misses):", ""]
        lines += [
            "| where | metric | ratio of medians | median of ratios | spread (rounds) | target "
            "| verdict |",
            "|---|---|---:|---:|---:|---:|---|",
            *rows,
        ]
    return "\n".join(lines) + "\n"
