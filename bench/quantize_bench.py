"""Quantize the demo model with Herd (llama_model_quantize via llama-cpp-python), then
measure each variant's perplexity with Herd and with llama.cpp's own `llama-perplexity` on
the same file, text, context, batch and threads, side by side; print a Markdown table.

    PYTHONPATH=. python bench/quantize_bench.py \
        --llama-perplexity /work/anchors/bin/llama-perplexity \
        --threads 2 --ctx 512

Quantize speed is reported in seconds per GiB of source file.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

from app.compress.quantize import llama_ftypes
from app.engine.measure import Measured
from app.engine.quantize import llama_cpp_version, quantize_file
from app.evaluation.plan import DEFAULT_TEXT
from app.store.demo import find_demo_model

GIB = 1024**3
_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")

# (name, source: "demo" or an earlier name, ftype, pruned layers), as the walk-through.
VARIANTS = (
    ("Q8_0", "demo", "Q8_0", ()),
    ("Q5_K_M", "Q8_0", "Q5_K_M", ()),
    ("Q4_K_M", "Q8_0", "Q4_K_M", ()),
    ("Q8_0.pruned-3-7", "Q8_0", "Q8_0", (3, 7)),
)


def anchor_perplexity(binary: Path, model: Path, text: Path, ctx: int, threads: int) -> float:
    done = subprocess.run(
        [str(binary), "-m", str(model), "-f", str(text), "-c", str(ctx), "-b", str(ctx),
         "-t", str(threads), "--no-warmup"],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    found = _FINAL.search(done.stdout + done.stderr)
    if not found:
        raise RuntimeError(f"llama-perplexity said:\n{(done.stdout + done.stderr)[-3000:]}")
    return float(found.group(1))


def herd_perplexity(model: Path, text: str, ctx: int, threads: int) -> float:
    with Measured(model, ctx, threads) as measured:
        return measured.perplexity(measured.tokenize(text)).perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llama-perplexity", type=Path,
                        default=Path("/work/anchors/bin/llama-perplexity"))  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    args = parser.parse_args()
    text = args.text.read_text(encoding="utf-8")
    types = llama_ftypes()
    demo = find_demo_model().path
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{llama_cpp_version()}; threads {args.threads}; ctx {args.ctx}; text {args.text.name}"
    )
    with tempfile.TemporaryDirectory(prefix="herd-qbench-") as tmp:
        files = {"demo": demo}
        rows = []
        for name, source, ftype, pruned in VARIANTS:
            out = Path(tmp) / f"{name}.gguf"
            started = time.perf_counter()
            quantize_file(files[source], out, types[ftype], allow_requantize=True,
                          prune_layers=pruned, nthread=args.threads)  # fmt: skip
            seconds = time.perf_counter() - started
            files[name] = out
            rows.append((name, source, seconds, files[source].stat().st_size))
        print()
        print("| model | size (MiB) | Herd PPL | llama-perplexity PPL | Herd / anchor |")
        print("|---|---:|---:|---:|---:|")
        for name, path in files.items():
            herd = herd_perplexity(path, text, args.ctx, args.threads)
            anchor = anchor_perplexity(args.llama_perplexity, path, args.text, args.ctx,
                                       args.threads)  # fmt: skip
            label = "demo (Q4_1)" if name == "demo" else name
            print(f"| {label} | {path.stat().st_size / 2**20:.1f} | {herd:.4f} | "
                  f"{anchor:.4f} | {herd / anchor:.4f} |", flush=True)  # fmt: skip
        print()
        print("| variant | from | seconds | source size (MiB) | seconds per GiB of source |")
        print("|---|---|---:|---:|---:|")
        for name, source, seconds, size in rows:
            print(f"| {name} | {source} | {seconds:.2f} | {size / 2**20:.1f} | "
                  f"{seconds / (size / GIB):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
