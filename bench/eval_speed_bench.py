"""The evaluation's prefill/decode speed (pp/tg) next to llama.cpp's `llama-bench`, on the
same files, prompt and generation lengths and threads, interleaved in one run so that the
shared machine's load falls on both alike; print a Markdown table with the ratios.

    PYTHONPATH=. flock /tmp/herd-bench.lock python bench/eval_speed_bench.py \
        --llama-bench /work/anchors/bin/llama-bench --threads 2 --pp 512 --tg 128

Herd's side is what `herd eval` runs (app.engine.measure.Measured.speed: random tokens, an
empty context each run, one warm-up run, the mean over the repeats); the anchor's is
`llama-bench -p PP -n TG -t T -r R -ngl 0`, whose `avg_ts` is the mean over its repetitions
after its own warm-up. The models: the demo model (Q4_1) and a Q8_0 made from it with Herd's
quantizer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path

from app.compress.quantize import llama_ftypes
from app.engine.measure import Measured
from app.engine.quantize import llama_cpp_version, quantize_file
from app.store.demo import find_demo_model


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def anchor_speed(binary: Path, model: Path, pp: int, tg: int, threads: int,
                 repeats: int) -> tuple[float, float]:  # fmt: skip
    """(pp tokens/s, tg tokens/s) from llama-bench's JSON."""
    done = subprocess.run(
        [str(binary), "-m", str(model), "-p", str(pp), "-n", str(tg), "-t", str(threads),
         "-r", str(repeats), "-ngl", "0", "-o", "json"],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"llama-bench said:\n{(done.stdout + done.stderr)[-3000:]}")
    tests = json.loads(done.stdout)
    by_kind = {("pp" if t["n_prompt"] else "tg"): float(t["avg_ts"]) for t in tests}
    return by_kind["pp"], by_kind["tg"]


def herd_speed(model: Path, pp: int, tg: int, threads: int, repeats: int) -> tuple[float, float]:
    """(pp tokens/s, tg tokens/s) as the evaluation job measures them (its context: 512 or
    what pp and tg need)."""
    with Measured(model, max(512, pp, tg), threads) as measured:
        speed = measured.speed(pp, tg, repeats)
    return speed.prefill_tps, speed.decode_tps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llama-bench", type=Path, default=Path("/work/anchors/bin/llama-bench"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pp", type=int, default=512)
    parser.add_argument("--tg", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Herd/anchor pairs per model, interleaved; medians reported",
    )
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{llama_cpp_version()}; threads {args.threads}; pp{args.pp} tg{args.tg}; "
          f"{args.repeats} repeats x {args.rounds} rounds", flush=True)  # fmt: skip
    print(f"load before: {uptime()}", flush=True)
    demo = find_demo_model().path
    with tempfile.TemporaryDirectory(prefix="herd-speedbench-") as tmp:
        q8 = Path(tmp) / "Q8_0.gguf"
        quantize_file(demo, q8, llama_ftypes()["Q8_0"], allow_requantize=True,
                      nthread=args.threads)  # fmt: skip
        rows = []
        for label, path in (("demo (Q4_1)", demo), ("Q8_0 (from Q4_1)", q8)):
            herd: list[tuple[float, float]] = []
            anchor: list[tuple[float, float]] = []
            for _ in range(args.rounds):
                herd.append(herd_speed(path, args.pp, args.tg, args.threads, args.repeats))
                anchor.append(anchor_speed(args.llama_bench, path, args.pp, args.tg,
                                           args.threads, args.repeats))  # fmt: skip
                print(
                    f"  {label}: herd {herd[-1][0]:.1f}/{herd[-1][1]:.1f}, llama-bench "
                    f"{anchor[-1][0]:.1f}/{anchor[-1][1]:.1f} (pp/tg t/s)",
                    flush=True,
                )
            rows.append((label, [statistics.median(x) for x in zip(*herd, strict=True)],
                         [statistics.median(x) for x in zip(*anchor, strict=True)]))  # fmt: skip
    print(f"load after: {uptime()}", flush=True)
    print()
    print(
        f"| model | Herd pp{args.pp} t/s | llama-bench pp{args.pp} t/s | pp Herd / anchor | "
        f"Herd tg{args.tg} t/s | llama-bench tg{args.tg} t/s | tg Herd / anchor |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, (h_pp, h_tg), (a_pp, a_tg) in rows:
        print(f"| {label} | {h_pp:.1f} | {a_pp:.1f} | {h_pp / a_pp:.2f} | {h_tg:.1f} | "
              f"{a_tg:.1f} | {h_tg / a_tg:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
