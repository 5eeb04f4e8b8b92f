"""Quantize jobs on real GGUF files with llama.cpp: success, refusals, faults, lineage."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.compress.quantize import QuantizeRefused, QuantizeRequest, start_quantize, target_name
from app.config import Settings
from app.control.audit import Actor, Via
from app.db.database import Database
from app.db.tables import Job, Model
from app.engine.cpu_buffers import new_llama
from app.jobs.follow import restart
from app.jobs.store import JobStore, JobView, process_alive
from app.store.catalog import ModelStore
from app.store.demo import add_demo_model
from app.store.gguf_file import read_gguf
from app.store.lineage import lineage_tree
from tests.conftest import TINY, run_herd
from tests.test_faults import tmpfs

JOB_TIMEOUT_S = 600

# Who starts the jobs here, as the audit log names them.
EVE = Actor("eve", Via.CLI, "tests")


def wait_job(
    store: JobStore, job_id: int, done: Callable[[JobView], bool], timeout_s: float = JOB_TIMEOUT_S
) -> JobView:
    deadline = time.monotonic() + timeout_s
    while True:
        store.reap_stale(stale_s=60)
        view = store.get(job_id)
        if done(view):
            return view
        if view.finished or time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not get there: {view}")
        time.sleep(0.2)


def finished(view: JobView) -> bool:
    return view.finished


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".partial")]


def model_count(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Model)) or 0)


def job_count(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Job)) or 0)


def generates(path: Path) -> str:
    """The model loads in llama.cpp and continues a prompt."""

    llm = new_llama(model_path=str(path), n_ctx=128, verbose=False)
    try:
        out = llm("The capital of France is", max_tokens=4, temperature=0)
        return str(out["choices"][0]["text"])  # type: ignore[index]
    finally:
        llm.close()


@pytest.fixture
def demo_store(database: Database, models_dir: Path) -> ModelStore:
    store = ModelStore(database.engine, models_dir)
    add_demo_model(store)
    return store


def test_demo_q4_1_to_q8_0_to_q4_k_m_and_a_pruned_variant_with_lineage(
    database: Database, demo_store: ModelStore, herd_env: dict[str, str], models_dir: Path
) -> None:
    demo = demo_store.list()[0]
    done = run_herd("models", "quantize", demo.name, "--type", "Q8_0", "--allow-requantize",
                    "--by", "alice", env=herd_env, timeout_s=JOB_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    q8 = demo_store.get(target_name(demo.name, "Q8_0", ()))
    assert q8 is not None and q8.status == "valid" and q8.file_type == "Q8_0"
    assert (q8.parent_id, q8.created_by) == (demo.id, "alice")
    assert q8.recipe is not None
    assert q8.recipe["ftype"] == "Q8_0" and q8.recipe["requantized"] is True
    assert q8.recipe["source_type"] == "Q4_1" and "llama-cpp-python" in q8.recipe["llama_cpp"]
    assert q8.size_bytes > demo.size_bytes  # 8.5 bits per weight against 5

    done = run_herd("models", "quantize", q8.name, "--type", "Q4_K_M", "--type", "Q8_0",
                    "--prune-layers", "3,7", "--allow-requantize", "--by", "bob",
                    env=herd_env, timeout_s=JOB_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    q4km = demo_store.get(target_name(q8.name, "Q4_K_M", (3, 7)))
    assert q4km is not None and q4km.parent_id == q8.id and q4km.file_type == "Q4_K_M"
    pruned = demo_store.get(target_name(q8.name, "Q8_0", (3, 7)))
    assert pruned is not None and pruned.recipe is not None
    assert pruned.recipe["pruned_layers"] == [3, 7]
    assert pruned.block_count == (demo.block_count or 0) - 2
    assert read_gguf(Path(pruned.path)).block_count == (demo.block_count or 0) - 2
    for model in (q8, q4km, pruned):
        assert generates(Path(model.path)).strip()
    assert partials(models_dir) == []

    tree = [(row.depth, row.model.name) for row in lineage_tree(demo_store.list())]
    assert tree[0] == (0, demo.name)
    assert (1, q8.name) in tree and (2, q4km.name) in tree and (2, pruned.name) in tree


def test_impossible_requests_are_refused_before_any_job_starts(
    database: Database, demo_store: ModelStore, settings: Settings, herd_env: dict[str, str]
) -> None:
    demo = demo_store.list()[0].name
    jobs = JobStore(database.engine)
    refused = {
        "already quantized (Q4_1)": QuantizeRequest(demo, "Q8_0"),
        "unknown file type 'Q9_Z'": QuantizeRequest(demo, "Q9_Z", allow_requantize=True),
        "needs an importance matrix": QuantizeRequest(demo, "IQ2_XXS", allow_requantize=True),
        "layers [99] are outside": QuantizeRequest(demo, "Q8_0", (3, 99), True),
        "no model 'nope.gguf'": QuantizeRequest("nope.gguf", "Q8_0"),
    }
    for reason, request in refused.items():
        with pytest.raises(QuantizeRefused, match=reason.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):  # fmt: skip
            start_quantize(settings, demo_store, jobs, [request], EVE)
    # One good and one bad type: nothing starts.
    with pytest.raises(QuantizeRefused, match="unknown file type"):
        start_quantize(settings, demo_store, jobs,
                       [QuantizeRequest(demo, "Q8_0", allow_requantize=True),
                        QuantizeRequest(demo, "Q7_X", allow_requantize=True)], EVE)  # fmt: skip
    assert job_count(database) == 0

    cli = run_herd("models", "quantize", demo, "--type", "Q4_K_M", env=herd_env)
    assert cli.returncode == 1
    assert "already quantized" in cli.stderr and "Traceback" not in cli.stderr
    assert job_count(database) == 0


def test_corrupt_and_truncated_sources_are_refused_and_fail_the_job(
    database: Database,
    settings: Settings,
    models_dir: Path,
    tiny_gguf: Callable[..., Path],
    herd_env: dict[str, str],
) -> None:
    store = ModelStore(database.engine, models_dir)
    good = store.add(tiny_gguf("tiny.gguf"))
    broken = models_dir / "broken.gguf"
    data = Path(good.path).read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    store.scan()
    jobs = JobStore(database.engine)
    with pytest.raises(QuantizeRefused, match=r"broken\.gguf is invalid: truncated"):
        start_quantize(settings, store, jobs, [QuantizeRequest("broken.gguf", "Q8_0")], EVE)

    # Valid when the job was asked for, truncated before its process ran: the job fails.
    job_id = jobs.create("quantize", QuantizeRequest("tiny.gguf", "Q8_0").params(), "eve")
    Path(good.path).write_bytes(data[:1000])
    run = run_herd("jobs", "run", str(job_id), env=herd_env)
    assert run.returncode == 1
    job = jobs.get(job_id)
    assert job.state == "failed" and "not a valid GGUF" in (job.error or ""), job
    bad_type = jobs.create("quantize", QuantizeRequest("tiny.gguf", "Q9_Z").params(), "eve")
    assert run_herd("jobs", "run", str(bad_type), env=herd_env).returncode == 1
    assert "unknown file type" in (jobs.get(bad_type).error or "")
    assert partials(models_dir) == [] and model_count(database) == 2


def test_too_little_disk_space_is_refused_with_needed_and_free_bytes(
    database: Database, settings: Settings, tmp_path: Path, tiny_gguf: Callable[..., Path]
) -> None:
    with tmpfs(tmp_path / "small_store", "1m") as root:
        store = ModelStore(database.engine, root)
        tiny = store.add(tiny_gguf("tiny.gguf"))
        with pytest.raises(QuantizeRefused, match=r"needs about \d+ bytes .* \d+ bytes .* free"):
            start_quantize(settings.model_copy(update={"models_dir": root}), store,
                           JobStore(database.engine), [QuantizeRequest(tiny.name, "F16")],
                           EVE)  # fmt: skip
        assert job_count(database) == 0


def _running_with_progress(view: JobView) -> bool:
    return view.state == "running" and view.progress > 0.05


def test_cancel_stops_the_job_and_leaves_nothing(
    database: Database, demo_store: ModelStore, settings: Settings, models_dir: Path
) -> None:
    demo = demo_store.list()[0].name
    jobs = JobStore(database.engine)
    # K-quants on one thread take seconds; the job checks for a cancel at every heartbeat,
    # here every 50 ms, so the cancel lands mid-way even on a quiet machine.
    slow = QuantizeRequest(demo, "Q5_K_M", allow_requantize=True, nthread=1)
    quick_beats = settings.model_copy(update={"job_heartbeat_s": 0.05})
    [job_id] = start_quantize(quick_beats, demo_store, jobs, [slow], EVE)
    running = wait_job(jobs, job_id, _running_with_progress)
    assert partials(models_dir), "the job writes its temporary file in the store"
    jobs.request_cancel(job_id)
    job = wait_job(jobs, job_id, finished, timeout_s=30)
    assert job.state == "cancelled" and job.error == "cancelled by an operator"
    deadline = time.monotonic() + 10
    while running.pid is not None and process_alive(running.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running.pid is not None and not process_alive(running.pid)
    assert partials(models_dir) == []
    assert demo_store.get(target_name(demo, "Q5_K_M", ())) is None
    assert not (models_dir / target_name(demo, "Q5_K_M", ())).exists()


def test_kill_9_of_the_job_process_fails_the_job_and_it_can_start_again(
    database: Database, demo_store: ModelStore, settings: Settings, models_dir: Path
) -> None:
    demo = demo_store.list()[0]
    jobs = JobStore(database.engine)
    [job_id] = start_quantize(settings, demo_store, jobs,
                              [QuantizeRequest(demo.name, "Q5_K_M", (), True, nthread=1)],
                              EVE)  # fmt: skip
    running = wait_job(jobs, job_id, _running_with_progress)
    assert running.pid is not None
    os.kill(running.pid, signal.SIGKILL)
    job = wait_job(jobs, job_id, finished, timeout_s=60)
    assert job.state == "failed"
    assert f"pid {running.pid}" in (job.error or "") and "killed" in (job.error or "")
    assert partials(models_dir) == []
    target = target_name(demo.name, "Q5_K_M", ())
    assert demo_store.get(target) is None and model_count(database) == 1

    again = restart(settings, jobs, job_id, EVE)
    job = wait_job(jobs, again, finished)
    assert job.state == "succeeded", job
    assert job.params["restart_of"] == job_id
    made = demo_store.get(target)
    assert made is not None and made.parent_id == demo.id and made.file_type == "Q5_K_M"
    assert partials(models_dir) == []


def test_a_disk_that_fills_mid_write_fails_the_job_cleanly_and_it_can_run_again(
    database: Database, settings: Settings, tmp_path: Path
) -> None:
    from app.store.demo import find_demo_model

    demo_bytes = find_demo_model().path.stat().st_size
    # Room for the source and the estimate for Q5_K_M, not much more.
    size_mb = (demo_bytes + 230 * 1024 * 1024) // (1024 * 1024)
    with tmpfs(tmp_path / "store", f"{size_mb}m") as root:
        store = ModelStore(database.engine, root)
        demo = add_demo_model(store)
        jobs = JobStore(database.engine)
        own = settings.model_copy(update={"models_dir": root})
        # One thread: slow enough that the disk fills while llama.cpp writes.
        slow = QuantizeRequest(demo.name, "Q5_K_M", allow_requantize=True, nthread=1)
        [job_id] = start_quantize(own, store, jobs, [slow], EVE)
        wait_job(jobs, job_id, lambda v: v.state == "running" and bool(partials(root)))
        filler = root / "filler.bin"
        # Take all but a little of what is left; the job writes meanwhile, so the disk may
        # fill before the filler has all it asked for.
        with contextlib.suppress(OSError), filler.open("wb") as out:
            left = shutil.disk_usage(root).free - 256 * 1024
            chunk = b"\0" * (1024 * 1024)
            while left > 0:
                out.write(chunk[: min(left, len(chunk))])
                out.flush()
                left -= len(chunk)
        job = wait_job(jobs, job_id, finished)
        assert job.state == "failed" and "could not quantize" in (job.error or ""), job
        assert partials(root) == [] and model_count(database) == 1

        filler.unlink()
        again = restart(own, jobs, job_id, EVE)
        assert wait_job(jobs, again, finished).state == "succeeded"
        assert store.get(target_name(demo.name, "Q5_K_M", ())) is not None
        assert partials(root) == []


def test_tiny_f32_model_quantizes_without_requantize(
    database: Database, settings: Settings, models_dir: Path, tiny_gguf: Callable[..., Path]
) -> None:
    store = ModelStore(database.engine, models_dir)
    tiny = store.add(tiny_gguf("tiny.gguf"))
    jobs = JobStore(database.engine)
    [job_id] = start_quantize(settings, store, jobs, [QuantizeRequest(tiny.name, "Q8_0")], EVE)
    job = wait_job(jobs, job_id, finished, timeout_s=120)
    assert job.state == "succeeded", job
    made = store.get("tiny.Q8_0.gguf")
    assert made is not None and made.recipe is not None
    assert made.recipe["requantized"] is False and made.block_count == TINY["n_layer"]
