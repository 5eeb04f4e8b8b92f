"""The engine benchmark's report: each server's median over rounds and both ratios to the
anchor (bench/ratios.py), and the headlines against the engine's targets."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from ratios import Ratio, headline, paired

# rounds[r][server][scenario][metric], as bench/engine_bench.py measures them.
Rounds = list[dict[str, dict[str, dict[str, float]]]]


def series(rounds: Rounds, server: str, scenario: str, metric: str) -> list[float]:
    """One value per round (NaN where that round has none)."""
    return [r.get(server, {}).get(scenario, {}).get(metric, math.nan) for r in rounds]


def nan_median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


# Targets for Herd's worker against llama-server, from the issues (ratios in one run).
TARGETS = {("1 stream", "decode_tps_per_stream"): 0.97, ("8 streams", "aggregate_tps"): 0.95}
# Herd's own shared-prefix TTFT over its cold one (p50), at most this.
PREFIX_TARGET = 0.25
COLD = "8 chats, 1k system prompt, cold"
SHARED = "8 chats, 1k system prompt, shared"


@dataclass
class Cell:
    """One server's figures for one metric: its median over rounds, and (for a server other
    than the anchor) both ratios to the anchor."""

    median: float
    ratio: Ratio | None = None


Table = dict[str, dict[str, dict[str, Cell]]]


def summary(rounds: Rounds, anchor: str) -> Table:
    """summary[scenario][metric][server], over the scenarios and metrics the anchor has."""
    out: Table = {}
    scen_names = dict.fromkeys(s for r in rounds for s in r.get(anchor, {}))
    for scenario in scen_names:
        metrics = dict.fromkeys(m for r in rounds for m in r.get(anchor, {}).get(scenario, {}))
        for metric in metrics:
            base = series(rounds, anchor, scenario, metric)
            row: dict[str, Cell] = {}
            for server in rounds[0]:
                values = series(rounds, server, scenario, metric)
                ratio = None if server == anchor else paired(values, base)
                row[server] = Cell(nan_median(values), ratio)
            out.setdefault(scenario, {})[metric] = row
    return out


def print_table(table: Table) -> None:
    """Per scenario and metric: each server's median over rounds; for the others, the ratio
    of medians / the median of per-round ratios [lowest-highest round]."""
    for scenario, metrics in table.items():
        for metric, row in metrics.items():
            cells = [f"{scenario:34s} {metric:22s}"]
            for server, cell in row.items():
                text = f"{server}={cell.median:8.1f}"
                r = cell.ratio
                if r is not None:
                    text += f" ({r.of_medians:.2f}x / {r.median_of_rounds:.2f}x"
                    text += f" [{r.low:.2f}-{r.high:.2f}])"
                cells.append(text)
            print("  ".join(cells))


def headlines(rounds: Rounds, anchor: str) -> list[str]:
    """Herd's worker against the anchor on the targeted scenarios, and its shared-prefix
    gain over its own cold prefix, each with both figures and one verdict."""
    lines: list[str] = []
    if "herd" not in rounds[0] or anchor == "herd":
        return lines
    for (scenario, metric), target in TARGETS.items():
        base = series(rounds, anchor, scenario, metric)
        if any(math.isfinite(v) for v in base):
            ratio = paired(series(rounds, "herd", scenario, metric), base)
            lines.append(headline(f"herd / {anchor}, {scenario}, {metric}", ratio, target))
    cold = series(rounds, "herd", COLD, "ttft_p50_ms")
    if any(math.isfinite(v) for v in cold):
        ratio = paired(series(rounds, "herd", SHARED, "ttft_p50_ms"), cold)
        label = "herd shared-prefix TTFT p50 / its cold-prefix TTFT p50"
        lines.append(headline(label, ratio, PREFIX_TARGET, higher_is_better=False))
    return lines
