"""Writes the sizing table of docs/several-machines.md from the figures in bench/RESULTS.md.

RESULTS.md holds one fenced block marked `sizing`: a figure per line, `name = value | section`,
the value written exactly as the named section of RESULTS.md writes it (checked here, so a
figure cannot drift from its table), the section by its heading. When a newer run replaces a
figure, change the line (value and section) and run this script; tests/test_sizing_table.py
fails while the page's table differs from what this script writes.

    python bench/sizing_table.py          # rewrite the table between the page's markers
    python bench/sizing_table.py --check  # exit 1 when the page's table is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
PAGE = REPO / "docs" / "several-machines.md"
BEGIN = "<!-- sizing table: written by bench/sizing_table.py from bench/RESULTS.md -->"
END = "<!-- end of sizing table -->"
BLOCK = re.compile(r"^```sizing\n(.*?)^```", re.M | re.S)
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$", re.M)
# Tokens per answer behind the calls/s rule of thumb (engine_bench.py's --max-tokens default).
ANSWER_TOKENS = 64
GPU_ROW = (
    "| GPU worker | not measured | one worker pod per GPU with the whole model offloaded "
    "(`--n-gpu-layers -1`), throughput from more slots (`--parallel`), not more pods per GPU; "
    "a model larger than one GPU: one worker pod with several GPUs and `--tensor-split` |"
)


@dataclass(frozen=True)
class Figure:
    value: float
    text: str
    section: str


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def sections(text: str) -> dict[str, str]:
    """Each heading's text -> its section (up to the next heading of its level or higher),
    headings inside fenced code left out."""

    # Fenced code blanked out, offsets kept: a "# ..." line in a code block is no heading.
    def blank(match: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    unfenced = re.sub(r"^```.*?^```", blank, text, flags=re.M | re.S)
    found = [(m.start(), len(m.group(1)), m.group(2)) for m in HEADING.finditer(unfenced)]
    out: dict[str, str] = {}
    for i, (start, level, title) in enumerate(found):
        end = next((s for s, lv, _ in found[i + 1 :] if lv <= level), len(text))
        out.setdefault(title, text[start:end])
    return out


def figures(results: str) -> dict[str, Figure]:
    """The sizing block's figures, each checked against the section it names."""
    block = BLOCK.search(results)
    if block is None:
        raise ValueError("bench/RESULTS.md has no ```sizing block")
    where = sections(results)
    out: dict[str, Figure] = {}
    for line in block.group(1).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = (part.strip() for part in line.partition("="))
        text, _, section = (part.strip() for part in rest.partition("|"))
        if section not in where:
            raise ValueError(f"{name}: no section {section!r} in bench/RESULTS.md")
        if not re.search(rf"(?<![\d.])(?<!\d,){re.escape(text)}(?!\d|[.,]\d)", where[section]):
            raise ValueError(f"{name}: {text} does not appear in section {section!r}")
        out[name] = Figure(float(text.replace(",", "")), text, section)
    return out


def link(figs: dict[str, Figure], *names: str) -> str:
    """Links to the sections the named figures come from, in order, each named briefly."""
    titles = dict.fromkeys(figs[n].section for n in names)
    return ", ".join(
        f"[{re.split(r'[:(]', t)[0].strip()}](bench/RESULTS.md#{slug(t)})" for t in titles
    )


def _thousands(value: float) -> str:
    return f"{value:,.0f}"


def gateway_row(f: dict[str, Figure]) -> str:
    v = {name: fig.value for name, fig in f.items()}
    cpu = f"{v['gateway_cpu_us_1']:.0f}-{v['gateway_cpu_us_256']:.0f} µs"
    measured = (
        f"one gateway process, request log on: {f['gateway_rps_1'].text} calls/s with 1 "
        f"client, {f['gateway_rps_32'].text} with 32, {f['gateway_rps_256'].text} with 256 "
        f"(trivial upstream: nginx returning a fixed answer); {cpu} of CPU per call (gateway "
        f"{v['gateway_own_cpu_us_1']:.0f}-{v['gateway_own_cpu_us_256']:.0f} µs, PostgreSQL "
        f"{v['gateway_pg_cpu_us_1']:.0f}-{v['gateway_pg_cpu_us_256']:.0f} µs); "
        f"{f['gateway_added_p50_ms'].text} ms added to the median call at 1 client "
        f"({link(f, 'gateway_rps_32')})"
    )
    half_32 = round(v["gateway_rps_32"] / 2, -2)
    half_256 = round(v["gateway_rps_256"] / 2, -2)
    cores = half_32 * v["gateway_cpu_us_32"] / 1e6
    rule = (
        f"2 replicas for availability; one per ~{_thousands(half_32)} calls/s with ~32 calls "
        f"in flight per replica, one per ~{_thousands(half_256)} calls/s with ~256 (half the "
        f"measured rates, for headroom); ~{cores:.1f} core each at {cpu} of CPU per call"
    )
    return f"| gateway replicas | {measured} | {rule} |"


def engine_row(f: dict[str, Figure]) -> str:
    v = {name: fig.value for name, fig in f.items()}
    measured = (
        f"`--parallel 16`: {v['engine16_tps_1']:.0f} tok/s for 1 stream, "
        f"{v['engine16_tps_4']:.0f} tok/s with 4, {v['engine16_tps_8']:.0f} tok/s with 8, "
        f"{v['engine16_tps_16']:.0f} tok/s with 16; `--parallel 4`: {v['engine4_tps_1']:.0f} "
        f"tok/s for 1 stream, {v['engine4_tps_4']:.0f} tok/s with 4 "
        f"({link(f, 'engine16_tps_1', 'engine4_tps_1')})"
    )
    rule = (
        f"`--parallel 4-8`; with {ANSWER_TOKENS}-token answers that is "
        f"~{v['engine16_tps_4'] / ANSWER_TOKENS:.0f} calls/s per 2-core worker with 4 streams, "
        f"~{v['engine16_tps_8'] / ANSWER_TOKENS:.0f} with 8; larger models are slower (not "
        f"measured here)"
    )
    return f"| CPU worker, 135M model (SmolLM2 Q4_1, 2 threads) | {measured} | {rule} |"


def table(results: str) -> str:
    """The sizing table, as markdown lines, from RESULTS.md's text."""
    f = figures(results)
    rows = ["| what | measured | rule of thumb |", "|---|---|---|"]
    rows += [gateway_row(f), engine_row(f), GPU_ROW]
    return "\n".join(rows)


def rewrite(page: str, new_table: str) -> str:
    """page with the text between its markers replaced by new_table."""
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the page has no {BEGIN!r} ... {END!r} markers")
    # Blank lines around the table: Markdown would read it as part of an HTML comment block.
    return f"{page[: start + len(BEGIN)]}\n\n{new_table}\n\n{page[end:]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only say whether the page is current")
    args = p.parse_args(argv)
    page = PAGE.read_text()
    wanted = rewrite(page, table(RESULTS.read_text()))
    if args.check:
        if wanted != page:
            print(f"{PAGE.relative_to(REPO)}: the sizing table is out of date", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
