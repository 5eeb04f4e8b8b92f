"""How `herd up` keeps what it started running: a process that exits is started again after
a delay that doubles while it keeps failing, and starts over once it stays up; one that keeps
crashing is reported with the tail of its log, and herd up goes on trying at the longest
delay while the rest serves. Restarts are counted in the database (app/db/process_restarts),
where the gateway's /metrics and the Overview page read them."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from app.db.process_restarts import ProcessRestarts, describe_exit

log = logging.getLogger(__name__)

Echo = Callable[[str], None]
# Lines of a crash-looping process's log shown with the report.
LOG_TAIL_LINES = 20
# How often pending counts are retried while the database is unreachable.
FLUSH_RETRY_S = 2.0


@dataclass(frozen=True)
class RestartPolicy:
    """Delays between restarts, when they start over, and what counts as a crash loop."""

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    # Up this long since its last start: the process is healthy, the delay starts over.
    healthy_after_s: float = 60.0
    # This many exits within the window: it keeps crashing (reported once, with its log).
    crash_loop_exits: int = 5
    crash_loop_window_s: float = 120.0


class Backoff:
    """One process's restart schedule: the delay before its next start, its recent exits."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.delay_s = 0.0
        self.exits: deque[float] = deque()
        self.started_at: float | None = None

    def exited(self, now: float) -> float:
        """Note an exit (or a failed start) at now; returns the delay before the next start."""
        self.exits.append(now)
        while self.exits and self.exits[0] < now - self.policy.crash_loop_window_s:
            self.exits.popleft()
        first, longest = self.policy.first_delay_s, self.policy.max_delay_s
        self.delay_s = first if self.delay_s == 0 else min(longest, self.delay_s * 2)
        self.started_at = None
        return self.delay_s

    def started(self, now: float) -> None:
        self.started_at = now

    @property
    def crash_looping(self) -> bool:
        return len(self.exits) >= self.policy.crash_loop_exits

    def settled(self, now: float) -> bool:
        """True once the process has stayed up healthy_after_s after a restart: the delay
        and the exits counted toward a crash loop start over."""
        if self.delay_s == 0 or self.started_at is None:
            return False
        if now - self.started_at < self.policy.healthy_after_s:
            return False
        self.delay_s = 0.0
        self.exits.clear()
        return True


class Watched(Protocol):
    """Something herd up keeps running: a child process, or the embedded PostgreSQL."""

    @property
    def name(self) -> str: ...

    @property
    def log_file(self) -> Path: ...

    def running(self) -> bool: ...

    def exit_code(self) -> int | None:
        """How it last ended, when known (negative: killed by that signal)."""
        ...

    def start_again(self, exit_code: int | None) -> None:
        """Start it again; raises when it cannot be started (tried again after the delay)."""
        ...


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ('' when there is none)."""
    try:
        with path.open("rb") as file:
            file.seek(0, 2)
            size = file.tell()
            file.seek(max(0, size - 16 * 1024))
            text = file.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Pending:
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_at: datetime | None = None


class RestartBook:
    """Restart counts on their way to the database. Written from a thread of their own, so a
    database that does not answer (perhaps the server being restarted) never delays a
    restart; held in memory and retried until it answers."""

    def __init__(self, store: ProcessRestarts, host: str) -> None:
        self.store = store
        self.host = host
        self._pending: dict[str, _Pending] = {}
        self._failing: dict[str, datetime | None] = {}
        self._log_paths: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="herd-restart-book", daemon=True)
        self._thread.start()

    def restarted(self, process: str, exit_code: int | None, log_path: Path) -> None:
        with self._lock:
            pending = self._pending.setdefault(process, _Pending())
            pending.restarts += 1
            pending.last_exit_code = exit_code
            pending.last_exit_at = datetime.now(UTC)
            self._log_paths[process] = str(log_path)
        self._wake.set()

    def failing(self, process: str, since: datetime | None, log_path: Path) -> None:
        """Mark (since) or clear (None) a process as crashing over and over."""
        with self._lock:
            self._pending.setdefault(process, _Pending())
            self._failing[process] = since
            self._log_paths[process] = str(log_path)
        self._wake.set()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> bool:
        """Write what is pending; False (kept for the next try) if the database refused."""
        with self._lock:
            batch, self._pending = self._pending, {}
            failing = dict(self._failing)
            paths = dict(self._log_paths)
        written: set[str] = set()
        try:
            for process, pending in batch.items():
                self.store.record(
                    self.host,
                    process,
                    restarts=pending.restarts,
                    last_exit_code=pending.last_exit_code,
                    last_exit_at=pending.last_exit_at,
                    failing_since=failing.get(process),
                    log_path=paths.get(process),
                )
                written.add(process)
            return True
        except SQLAlchemyError as exc:
            log.info("restart counts not written yet (will retry): %s", exc)
            return False
        finally:
            with self._lock:
                for process, pending in batch.items():
                    if process in written:
                        continue
                    newer = self._pending.setdefault(process, _Pending())
                    newer.restarts += pending.restarts
                    if newer.last_exit_at is None:
                        newer.last_exit_code = pending.last_exit_code
                        newer.last_exit_at = pending.last_exit_at

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(FLUSH_RETRY_S)
            self._wake.clear()
            if self.pending:
                self.flush()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the writer thread after one last try."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self.pending:
            self.flush()


@dataclass
class _State:
    watched: Watched
    backoff: Backoff
    due_at: float | None = None  # when it is to be started again; None while it runs
    exit_code: int | None = None
    failing: bool = False


class Restarter:
    """Watches what herd up runs; call tick() often (every few hundred ms)."""

    def __init__(
        self,
        watched: list[Watched],
        echo: Echo,
        book: RestartBook | None = None,
        policy: RestartPolicy | None = None,
    ) -> None:
        policy = policy or RestartPolicy()
        self.echo = echo
        self.book = book
        self.states = [_State(w, Backoff(policy)) for w in watched]

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for state in self.states:
            if state.due_at is None:
                self._check(state, now)
            elif now >= state.due_at:
                self._start(state, now)

    def _check(self, state: _State, now: float) -> None:
        watched, backoff = state.watched, state.backoff
        if watched.running():
            if backoff.settled(now) and state.failing:
                state.failing = False
                self.echo(f"{watched.name} has stayed up; restart delays start over")
                if self.book is not None:
                    self.book.failing(watched.name, None, watched.log_file)
            return
        state.exit_code = watched.exit_code()
        delay_s = backoff.exited(now)
        state.due_at = now + delay_s
        self.echo(
            f"{watched.name} {describe_exit(state.exit_code)}; restarting it in {delay_s:g} s. "
            f"Its log: {watched.log_file}"
        )
        self._report_crash_loop(state)

    def _start(self, state: _State, now: float) -> None:
        watched, backoff = state.watched, state.backoff
        try:
            watched.start_again(state.exit_code)
        except Exception as exc:
            delay_s = backoff.exited(now)
            state.due_at = now + delay_s
            self.echo(f"could not start {watched.name} again ({exc}); next try in {delay_s:g} s")
            self._report_crash_loop(state)
            return
        state.due_at = None
        backoff.started(now)
        if self.book is not None:
            self.book.restarted(watched.name, state.exit_code, watched.log_file)

    def _report_crash_loop(self, state: _State) -> None:
        watched, backoff = state.watched, state.backoff
        if state.failing or not backoff.crash_looping:
            return
        state.failing = True
        policy = backoff.policy
        tail = log_tail(watched.log_file)
        self.echo(
            f"{watched.name} keeps crashing ({len(backoff.exits)} exits within "
            f"{policy.crash_loop_window_s:g} s); herd up goes on starting it, waiting up to "
            f"{policy.max_delay_s:g} s between tries, and keeps the rest serving. The end of "
            f"{watched.log_file}:\n{tail}".rstrip()
        )
        if self.book is not None:
            self.book.failing(watched.name, datetime.now(UTC), watched.log_file)
