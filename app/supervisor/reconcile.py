"""One supervisor's state and its reconciliation step: desired deployments -> processes."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import httpx
import psutil

from app.config import Settings
from app.control.deployments import Deployments
from app.supervisor import logs
from app.supervisor.placement import Placer
from app.supervisor.processes import WorkerHandle, adopt, spawn, wait_all, worker_argv
from app.supervisor.records import DesiredDeployment, SupervisorRecords, WorkerRow

log = logging.getLogger(__name__)

# Worker rows on this machine silent this long, with their pid gone, are removed.
STALE_ROW_S = 60.0
STALE_SWEEP_EVERY_S = 15.0


class Supervisor:
    """Runs the worker processes this node's deployments ask for."""

    def __init__(
        self,
        settings: Settings,
        records: SupervisorRecords,
        env: dict[str, str],
        placer: Placer | None = None,
    ):
        self.settings = settings
        self.records = records
        self.env = env
        self.placer = placer or Placer(records.engine, records.node, settings.node_label_map)
        # The deployments table's one writer, for the failure counts kept here.
        self.deployments = Deployments(records.engine, settings.worker_live_s)
        self.handles: dict[int, WorkerHandle] = {}
        # Earliest time (monotonic) a deployment with failures may start a replica again.
        self.next_start_at: dict[int, float] = {}
        self.last_sweep_at = 0.0
        # The worker lets running requests finish first; the kill comes only after that.
        self.stop_timeout_s = settings.worker_shutdown_grace_s + settings.worker_stop_timeout_s

    # ---- start-up and shut-down --------------------------------------------------------

    def adopt_running(self) -> int:
        """Take over the workers a previous supervisor of this node left running.

        Records whose process is gone are dropped with the worker row they left behind.
        """
        adopted = 0
        for record in self.records.processes():
            handle = adopt(
                record.id, record.deployment_id, record.generation, record.pid, record.log_path
            )
            if handle is None:
                log.info("worker pid %s (deployment %s) is gone", record.pid, record.deployment_id)
                self.records.forget(record.id, record.pid, record.deployment_id)
                continue
            if record.stop_requested:
                handle.request_stop(self.stop_timeout_s)
            self.handles[record.id] = handle
            adopted += 1
            log.info("adopted worker pid %s of deployment %s", record.pid, record.deployment_id)
        return adopted

    def stop_all(self) -> None:
        """Stop every worker (gracefully, at once, then by force) and drop their records."""
        handles = list(self.handles.values())
        wait_all(handles, self.stop_timeout_s)
        for handle in handles:
            try:
                self.records.forget(handle.record_id, handle.pid, handle.deployment_id)
            except Exception as exc:  # the database may be what made us stop
                log.warning("could not remove the record of worker pid %s: %s", handle.pid, exc)
        self.handles.clear()

    # ---- reconciliation ----------------------------------------------------------------

    def reconcile(self) -> None:
        """One pass: heartbeat this node, place replicas, reap exited workers, kill hung
        ones, start and stop to match what is placed here."""
        self.placer.heartbeat()
        plan = self.placer.place(self.settings.node_timeout_s)
        if plan:
            log.info("placement: removed %s, added %s", plan.remove, plan.add)
        desired = self.records.desired()
        rows = self._rows_by_record()
        if self._reap(desired, rows):
            # Failures were counted (perhaps to the limit): act on the updated rows, or a
            # deployment just given up on would get one more start.
            desired = self.records.desired()
        self._enforce_deadlines()
        self._kill_hung(rows)
        for deployment in desired.values():
            self._converge(deployment, rows)
        for handle in list(self.handles.values()):
            if handle.deployment_id not in desired and not handle.stopping:
                log.info("deployment %s is gone; stopping worker pid %s",
                         handle.deployment_id, handle.pid)  # fmt: skip
                self._stop(handle)
        self._reset_stable(desired, rows)
        self._sweep_stale_rows()

    def _rows_by_record(self) -> dict[int, WorkerRow]:
        rows = self.records.worker_rows(h.pid for h in self.handles.values())
        found: dict[int, WorkerRow] = {}
        for handle in self.handles.values():
            for row in rows:  # newest first
                if row.pid == handle.pid and row.deployment_id in (handle.deployment_id, None):
                    found[handle.record_id] = row
                    break
        return found

    def _is_ready(self, handle: WorkerHandle, rows: dict[int, WorkerRow]) -> bool:
        row = rows.get(handle.record_id)
        return (
            row is not None
            and row.state == "ready"
            and row.heartbeat_age_s <= self.settings.worker_live_s
        )

    def _reap(self, desired: dict[int, DesiredDeployment], rows: dict[int, WorkerRow]) -> bool:
        """Clean up after exited workers; True when a failure was counted."""
        counted = False
        for handle in list(self.handles.values()):
            if not handle.exited():
                continue
            del self.handles[handle.record_id]
            row = rows.get(handle.record_id)
            self.records.forget(handle.record_id, handle.pid, handle.deployment_id)
            if handle.stopping:
                log.info("worker pid %s stopped", handle.pid)
                continue
            deployment = desired.get(handle.deployment_id)
            reason = self._failure_reason(handle, row)
            if deployment is None or deployment.state != "active":
                log.info("worker pid %s of deployment %s ended: %s",
                         handle.pid, handle.deployment_id, reason)  # fmt: skip
                continue
            failures, gave_up = self.deployments.record_failure(
                deployment.id, reason, self.settings.restart_max_failures
            )
            counted = True
            if gave_up:
                log.error("deployment %s (%s) failed %d times in a row; giving up: %s",
                          deployment.id, deployment.alias, failures, reason)  # fmt: skip
                continue
            delay = min(
                self.settings.restart_backoff_s * 2 ** max(0, failures - 1),
                self.settings.restart_backoff_max_s,
            )
            self.next_start_at[deployment.id] = time.monotonic() + delay
            log.warning("deployment %s (%s): %s; restarting in %.1f s (failure %d of %d)",
                        deployment.id, deployment.alias, reason, delay, failures,
                        self.settings.restart_max_failures)  # fmt: skip
        return counted

    def _failure_reason(self, handle: WorkerHandle, row: WorkerRow | None) -> str:
        how = handle.describe_exit()
        if row is not None and row.error:
            detail = row.error
        else:
            tail = logs.last_lines(self.settings, handle.log_path, 3)
            detail = " | ".join(tail) if tail else "no output"
        return f"worker pid {handle.pid} {how}: {detail} (log: {handle.log_path})"

    def _enforce_deadlines(self) -> None:
        for handle in self.handles.values():
            if handle.overdue():
                log.warning("worker pid %s ignored SIGTERM for %.0f s; killing it",
                            handle.pid, self.stop_timeout_s)  # fmt: skip
                handle.kill()

    def _kill_hung(self, rows: dict[int, WorkerRow]) -> None:
        limit = self.settings.worker_heartbeat_timeout_s
        for handle in self.handles.values():
            row = rows.get(handle.record_id)
            if handle.stopping or row is None or row.state != "ready":
                continue
            if row.heartbeat_age_s <= limit or self._answers_health(row.url):
                # A worker that still answers HTTP is alive; its heartbeat may be failing
                # because the database was away, which is no reason to kill it.
                continue
            handle.kill(f"sent no heartbeat for {row.heartbeat_age_s:.0f} s; killed as hung")

    @staticmethod
    def _answers_health(url: str) -> bool:
        try:
            httpx.get(f"{url.rstrip('/')}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return True

    def _converge(self, deployment: DesiredDeployment, rows: dict[int, WorkerRow]) -> None:
        live = [
            h for h in self.handles.values() if h.deployment_id == deployment.id and not h.stopping
        ]
        if deployment.state == "stopped":
            for handle in live:
                self._stop(handle)
            return
        target = deployment.replicas
        current = [h for h in live if h.generation == deployment.generation]
        older = [h for h in live if h.generation != deployment.generation]

        if len(current) > target:
            # Scale down: drop the least useful first (not ready, then the youngest).
            current.sort(key=lambda h: (self._is_ready(h, rows), h.age_s), reverse=True)
            for handle in current[target:]:
                self._stop(handle)
            current = current[:target]

        # Rolling update: an old replica stops only when a ready new one covers it.
        ready_current = sum(1 for h in current if self._is_ready(h, rows))
        surplus = len(older) + ready_current - target
        if surplus > 0:
            older.sort(key=lambda h: (self._is_ready(h, rows), h.age_s))
            for handle in older[:surplus]:
                self._stop(handle)

        missing = target - len(current)
        if deployment.state != "active" or missing <= 0:
            return
        if deployment.failures and time.monotonic() < self.next_start_at.get(deployment.id, 0):
            return  # backing off after a failure
        deployment = self._local_model(deployment)
        if deployment.model_status != "valid" or not Path(deployment.model_path).is_file():
            reason = (
                f"model file {deployment.model_path} is not in the model store "
                f"(status {deployment.model_status}); rescan the store or roll to another model"
            )
            log.error("deployment %s (%s): %s", deployment.id, deployment.alias, reason)
            self.deployments.fail(deployment.id, reason)
            return
        for _ in range(missing):
            self._start(deployment)

    def _local_model(self, deployment: DesiredDeployment) -> DesiredDeployment:
        """The deployment with its model at this node's store path when the recorded path
        (written by the node that scanned it) is not on this machine."""
        if Path(deployment.model_path).is_file():
            return deployment
        local = self.settings.models_path / deployment.model_name
        if local.is_file():
            return dataclasses.replace(deployment, model_path=str(local))
        return deployment

    def _start(self, deployment: DesiredDeployment) -> None:
        log_path = logs.new_log_path(
            self.settings, deployment.id, deployment.alias, deployment.generation
        )
        argv = worker_argv(deployment, self.settings.worker_host, log_path)
        popen = spawn(argv, self.env, log_path)
        try:
            record_id = self.records.add_process(
                deployment.id, deployment.generation, popen.pid, str(log_path)
            )
        except Exception:
            # Unrecorded, it could never be adopted or stopped by a later supervisor.
            popen.kill()
            popen.wait()
            raise
        self.handles[record_id] = WorkerHandle(
            record_id=record_id,
            deployment_id=deployment.id,
            generation=deployment.generation,
            pid=popen.pid,
            log_path=log_path,
            popen=popen,
        )
        log.info("started worker pid %s for deployment %s (%s, generation %s); log %s",
                 popen.pid, deployment.id, deployment.alias, deployment.generation,
                 log_path)  # fmt: skip
        logs.prune_logs(
            self.settings,
            deployment.id,
            keep={h.log_path for h in self.handles.values()},
        )

    def _stop(self, handle: WorkerHandle) -> None:
        log.info("stopping worker pid %s of deployment %s", handle.pid, handle.deployment_id)
        handle.request_stop(self.stop_timeout_s)
        self.records.mark_stopping(handle.record_id)

    def _reset_stable(
        self, desired: dict[int, DesiredDeployment], rows: dict[int, WorkerRow]
    ) -> None:
        """A replica ready for restart_stable_s ends a deployment's run of failures."""
        for deployment in desired.values():
            if not deployment.failures or deployment.state != "active":
                continue
            if any(
                h.deployment_id == deployment.id
                and not h.stopping
                and self._is_ready(h, rows)
                and h.age_s >= self.settings.restart_stable_s
                for h in self.handles.values()
            ):
                self.deployments.reset_failures(deployment.id)
                self.next_start_at.pop(deployment.id, None)

    def _sweep_stale_rows(self) -> None:
        """Remove rows that workers on this machine left when they died unsupervised."""
        now = time.monotonic()
        if now - self.last_sweep_at < STALE_SWEEP_EVERY_S:
            return
        self.last_sweep_at = now
        ours = {h.pid for h in self.handles.values()}
        for worker_id, pid in self.records.stale_local_workers(STALE_ROW_S):
            if pid is not None and (pid in ours or psutil.pid_exists(pid)):
                continue
            log.info("removing the row of worker %s (pid %s): silent and gone", worker_id, pid)
            self.records.delete_worker_row(worker_id)
