"""KV prefixes that survive a restart or a roll (engine/prefix_snapshots.py), on real llama.cpp
with the SmolLM2 demo model: saved at close and when hot, restored by a new engine of the same
model and settings with output identical to a cold run, refused for another model file or
n_ctx, skipped when truncated or corrupt, and kept within their bound on disk."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

import gguf
import httpx
import pytest

from app.cli import build_parser
from app.config import Settings
from app.engine.batched import BatchedEngine
from app.engine.factory import load_batched_engine, make_engine
from app.engine.kv_snapshot_files import (
    Fingerprint,
    SnapshotFolder,
    SnapshotSkipped,
    read_header,
    read_payload,
)
from app.engine.loader import LoadOptions
from app.engine.prefix_snapshots import SnapshotConfig
from app.store.demo import find_demo_model
from app.worker.options import DEFAULT_KV_SNAPSHOT_MAX_MB, WorkerOptions
from app.worker.process import kv_snapshots
from tests.test_batching import SYSTEM, greedy, run_alone
from tests.worker_process import WorkerLauncher

N_CTX = 512
QUESTIONS = ["What is rule 3?", "What is rule 7?", "Summarize the rules.", "What is rule 9?"]


@pytest.fixture(scope="module")
def demo_path() -> Path:
    return find_demo_model().path


def engine(path: Path, folder: Path | None, n_ctx: int = N_CTX, parallel: int = 2) -> BatchedEngine:
    config = None if folder is None else SnapshotConfig(folder)
    return load_batched_engine(LoadOptions(path, n_ctx=n_ctx, parallel=parallel), snapshots=config)


def ask(target: BatchedEngine, question: str) -> tuple[str, int]:
    """Greedy answer to question under SYSTEM, and the prompt tokens it found cached."""
    text, finished = asyncio.run(run_alone(target, greedy(question, SYSTEM, max_tokens=12)))
    return text, finished.usage.cached_tokens


def ask_new(path: Path, folder: Path | None, question: str, **options: int) -> tuple[str, int]:
    """ask() of a new engine (see engine for options), closed after its one answer."""
    fresh = engine(path, folder, **options)
    try:
        return ask(fresh, question)
    finally:
        fresh.close()


@pytest.fixture(scope="module")
def cold(demo_path: Path) -> str:
    """The reference: QUESTIONS[2] answered by an engine that never saw SYSTEM."""
    text, cached = ask_new(demo_path, None, QUESTIONS[2])
    assert cached == 0
    return text


@pytest.fixture(scope="module")
def saved(demo_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot folder as a worker leaves it: two prompts shared SYSTEM, then it stopped."""
    root = tmp_path_factory.mktemp("kv") / "kv_snapshots"
    first = engine(demo_path, root)
    try:
        assert ask(first, QUESTIONS[0])[1] == 0
        assert ask(first, QUESTIONS[1])[1] > 150
        assert not list(root.glob("*/*.kv"))  # reused once: saved at close, not before
    finally:
        first.close()
    assert len(list(root.glob("*/*.kv"))) == 1
    return root


def copy_of(saved: Path, tmp_path: Path) -> Path:
    root = tmp_path / "kv_snapshots"
    shutil.copytree(saved, root)
    return root


def test_a_new_engine_restores_the_prefix_and_answers_as_a_cold_one(
    demo_path: Path, saved: Path, cold: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.engine")
    root = copy_of(saved, tmp_path)
    # Another slot count than the engine that saved it: a snapshot is one slot's stream.
    text, cached = ask_new(demo_path, root, QUESTIONS[2], parallel=3)
    assert "restored 1 KV prefix snapshot(s)" in caplog.text
    assert cached > 150
    assert text == cold


def test_another_model_file_or_n_ctx_is_refused_with_the_reason(
    demo_path: Path, saved: Path, cold: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.engine")
    root = copy_of(saved, tmp_path)
    # The same weights under another name: another file, so its snapshots are not these.
    other = tmp_path / "renamed.gguf"
    shutil.copyfile(demo_path, other)
    field = gguf.GGUFReader(other, "r+").fields["general.name"]
    name = field.parts[field.data[0]]
    name[:] = list(b"X" * len(name))
    del field, name
    text, cached = ask_new(other, root, QUESTIONS[2])
    assert cached == 0 and text == cold
    assert "not restored: saved with other settings: model" in caplog.text
    caplog.clear()
    assert ask_new(demo_path, root, QUESTIONS[2], n_ctx=384)[1] == 0
    assert "n_ctx_slot 512 (here 384)" in caplog.text


def test_a_truncated_snapshot_is_skipped_and_a_corrupt_one_never_loaded(
    demo_path: Path, saved: Path, cold: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.engine")
    root = copy_of(saved, tmp_path)
    (path,) = root.glob("*/*.kv")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    text, cached = ask_new(demo_path, root, QUESTIONS[2])
    assert cached == 0 and text == cold
    assert "skipped: truncated" in caplog.text
    # One byte of the KV changed: the checksum refuses it before llama.cpp sees it.
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF
    path.write_bytes(bytes(flipped))
    snapshot = read_header(path, path.parent.name)
    with pytest.raises(SnapshotSkipped, match="checksum"):
        read_payload(snapshot)


def test_a_hot_prefix_is_saved_while_serving_and_a_second_worker_restores_it(
    demo_path: Path, cold: str, tmp_path: Path
) -> None:
    """A roll: the new worker starts while the old one still serves."""
    root = tmp_path / "kv_snapshots"
    old = engine(demo_path, root)
    try:
        for question in QUESTIONS[:2] + QUESTIONS[3:]:
            ask(old, question)
        # The third reuse makes it hot: saved by the writer thread while the engine serves.
        ask(old, QUESTIONS[0])
        deadline = time.monotonic() + 30
        while not list(root.glob("*/*.kv")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(root.glob("*/*.kv"))) == 1
        assert len(old._snapshots.save_ms) == 1
        text, cached = ask_new(demo_path, root, QUESTIONS[2])
        assert cached > 150 and text == cold
    finally:
        old.close()
    # Already on disk: the old worker's close does not write it again.
    assert len(old._snapshots.save_ms) == 1


def test_the_bound_evicts_the_least_recently_used_first(tmp_path: Path) -> None:
    root = tmp_path / "kv_snapshots"
    old = SnapshotFolder(root, Fingerprint.of({"model": "old"}), max_bytes=10_000)
    mine = SnapshotFolder(root, Fingerprint.of({"model": "new"}), max_bytes=10_000)
    first = old.write([1, 2, 3], 1, b"a" * 3000, keep=())
    # Left by workers killed mid-write: an old one goes at the next write, a fresh one stays.
    stale, fresh = first.with_name(".x.kv.1.tmp"), first.with_name(".y.kv.2.tmp")
    stale.write_bytes(b"s" * 5000)
    fresh.write_bytes(b"f")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    time.sleep(0.01)
    second = mine.write([4, 5, 6], 1, b"b" * 3000, keep=())
    time.sleep(0.01)
    third = mine.write([7, 8, 9], 1, b"c" * 3000, keep=())
    assert first.exists() and second.exists() and third.exists()
    assert not stale.exists() and fresh.exists()
    fourth = mine.write([1, 1, 1], 1, b"d" * 3000, keep=())
    assert not first.exists()  # the other model's file was the least recently used
    assert second.exists() and third.exists() and fourth.exists()
    fifth = mine.write([2, 2, 2], 1, b"e" * 3000, keep={second})
    assert second.exists() and not third.exists() and fifth.exists()
    with pytest.raises(SnapshotSkipped, match="exceed the bound"):
        mine.write([3, 3, 3], 1, b"f" * 20_000, keep=())
    total = sum(p.stat().st_size for p in root.glob("*/*.kv"))
    assert total <= 10_000
    assert [s.tokens for s in mine.snapshots()] != []


def test_a_restarted_worker_process_restores_what_the_stopped_one_saved(
    worker_launcher: WorkerLauncher,
) -> None:
    model = str(find_demo_model().path)
    flags = ["--model", model, "--parallel", "2", "--n-ctx", str(N_CTX)]

    def call(url: str, question: str) -> int:
        body = {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ],
            "max_tokens": 4,
            "temperature": 0,
        }
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
        return int(answer["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0))

    first = worker_launcher.start(*flags)
    url = first.wait_ready()
    assert call(url, QUESTIONS[0]) == 0
    assert call(url, QUESTIONS[1]) > 150
    assert first.stop() == 0  # SIGTERM: the engine closes and saves the shared prefix
    assert len(list((worker_launcher.home / "kv_snapshots").glob("*/*.kv"))) == 1
    second = worker_launcher.start(*flags)
    assert call(second.wait_ready(), QUESTIONS[2]) > 150
    assert "restored 1 KV prefix snapshot(s)" in second.log()
    second.stop()


def test_worker_flags_turn_snapshots_off_and_bound_them(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    args = build_parser().parse_args(["worker", "--model", "m.gguf"])
    options = WorkerOptions(
        model=args.model, kv_snapshots=args.kv_snapshots, kv_snapshot_max_mb=args.kv_snapshot_max_mb
    )
    config = kv_snapshots(settings, options)
    assert config is not None
    assert config.directory == tmp_path.resolve() / "kv_snapshots"
    assert config.max_bytes == DEFAULT_KV_SNAPSHOT_MAX_MB << 20
    argv = ["worker", "--model", "m.gguf", "--no-kv-snapshots", "--kv-snapshot-max-mb", "64"]
    args = build_parser().parse_args(argv)
    off = WorkerOptions(model="m.gguf", kv_snapshots=args.kv_snapshots)
    assert kv_snapshots(settings, off) is None
    assert args.kv_snapshot_max_mb == 64
    with pytest.raises(ValueError, match="kv-snapshot-max-mb"):
        WorkerOptions(model="m.gguf", kv_snapshot_max_mb=0)


def test_make_engine_passes_snapshots_to_the_batched_engine(
    demo_path: Path, tmp_path: Path
) -> None:
    made = make_engine(
        LoadOptions(demo_path, n_ctx=256, parallel=1), snapshots=SnapshotConfig(tmp_path)
    )
    try:
        assert isinstance(made, BatchedEngine) and made._snapshots.enabled
    finally:
        made.close()
