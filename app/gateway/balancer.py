"""Picking a worker: traffic weights between deployments, least outstanding requests within
one, session affinity, cool-down of failing workers, and a bounded queue per worker.

Batch lines are counted apart: a worker's engine preempts batch jobs for interactive calls
(app/engine/batched.py), so for an interactive call the slots this gateway filled with batch
lines count as free, while a batch line sees every call in flight. This mirrors the engine's
own admission, so live traffic neither avoids workers that merely run batch work nor queues
behind it.

All state is this gateway replica's own and lives on the event loop thread: no locks.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

from app.gateway.routing import AliasRoute, DeploymentTarget, WorkerTarget


class NoLiveWorkerError(LookupError):
    """The alias has no worker that is ready, fresh and not cooling down."""


class AllBusyError(LookupError):
    """Every live worker of the alias has its slots and its queue allowance taken."""


@dataclass(frozen=True)
class Pick:
    deployment: DeploymentTarget
    worker: WorkerTarget
    # A batch line (X-Herd-Priority: batch on the worker): counted apart, see the module.
    batch: bool = False


class Balancer:
    """Chooses workers and keeps count of what each one is doing for this gateway."""

    def __init__(self, *, queue_per_worker: int, cooldown_s: float, affinity_size: int) -> None:
        self.queue_per_worker = queue_per_worker
        self.cooldown_s = cooldown_s
        self.affinity_size = affinity_size
        self.outstanding: defaultdict[int, int] = defaultdict(int)
        # Of outstanding, the batch lines per worker (only workers that have some).
        self.outstanding_batch: dict[int, int] = {}
        self._cool_until: dict[int, float] = {}
        # (alias, session) -> worker id; least recently used sessions are forgotten first.
        self._affinity: OrderedDict[tuple[str, str], int] = OrderedDict()
        # Smooth weighted round robin (as in nginx): exact shares over any window.
        self._wrr: defaultdict[str, dict[int | None, float]] = defaultdict(dict)
        self._turn = 0

    # -- what a worker can take ------------------------------------------------------------
    def capacity(self, worker: WorkerTarget) -> int:
        return worker.slots_total + self.queue_per_worker

    def cooling(self, worker: WorkerTarget, now: float) -> bool:
        until = self._cool_until.get(worker.id)
        if until is None:
            return False
        if now >= until:
            del self._cool_until[worker.id]
            return False
        return True

    def held(self, worker: WorkerTarget, *, batch: bool) -> int:
        """The calls in flight on worker that a call of this class waits behind: every one
        for a batch line; for an interactive call only the interactive ones, since the
        worker's engine preempts batch jobs for it."""
        busy = self.outstanding.get(worker.id, 0)
        return busy if batch else busy - self.outstanding_batch.get(worker.id, 0)

    def _overloaded(self, worker: WorkerTarget, batch: bool) -> bool:
        # An affine session moves on once its worker would queue more than it runs.
        return self.held(worker, batch=batch) >= 2 * worker.slots_total

    def _load(self, worker: WorkerTarget, batch: bool) -> tuple[float, float]:
        # Among workers equally free for the call, the one with less batch work wins: taking
        # a batch job's slot costs that job a re-prefill.
        slots = worker.slots_total
        return self.held(worker, batch=batch) / slots, self.outstanding.get(worker.id, 0) / slots

    # -- choosing --------------------------------------------------------------------------
    def pick(
        self,
        route: AliasRoute,
        session: str | None,
        exclude: frozenset[int] = frozenset(),
        *,
        batch: bool = False,
    ) -> Pick:
        """The worker for the next attempt of a call (a batch line when batch); exclude holds
        workers this call already tried."""
        now = time.monotonic()
        live: dict[int | None, list[WorkerTarget]] = {}
        deployments: dict[int | None, DeploymentTarget] = {}
        for d in route.deployments:
            if d.weight <= 0:
                continue
            ws = [w for w in d.workers if w.id not in exclude and not self.cooling(w, now)]
            if ws:
                live[d.id], deployments[d.id] = ws, d
        if not live:
            raise NoLiveWorkerError(route.alias)
        free = {
            did: [w for w in ws if self.held(w, batch=batch) < self.capacity(w)]
            for did, ws in live.items()
        }
        if not any(free.values()):
            raise AllBusyError(route.alias)

        if session is not None:
            key = (route.alias, session)
            wid = self._affinity.get(key)
            if wid is not None:
                for did, ws in free.items():
                    for w in ws:
                        if w.id == wid and not self._overloaded(w, batch):
                            self._affinity.move_to_end(key)
                            return Pick(deployments[did], w, batch)

        did = self._next_deployment(route.alias, {d: deployments[d] for d in live})
        candidates = free[did]
        if not candidates:
            # The weighted choice is full: spill to the least loaded worker anywhere.
            candidates = [w for ws in free.values() for w in ws]
        loads = {w.id: self._load(w, batch) for w in candidates}
        least = min(loads.values())
        tied = [w for w in candidates if loads[w.id] == least]
        # Ties rotate, so idle workers share new sessions instead of the first taking all.
        self._turn += 1
        worker = tied[self._turn % len(tied)]
        owner = next(d for d in deployments.values() if worker in live[d.id])
        if session is not None:
            self._remember(route.alias, session, worker.id)
        return Pick(owner, worker, batch)

    def _next_deployment(
        self, alias: str, choices: dict[int | None, DeploymentTarget]
    ) -> int | None:
        current = self._wrr[alias]
        for gone in [k for k in current if k not in choices]:
            del current[gone]
        total = 0
        for did, d in choices.items():
            current[did] = current.get(did, 0.0) + d.weight
            total += d.weight
        best = max(choices, key=lambda did: (current[did], -(did or 0)))
        current[best] -= total
        return best

    def _remember(self, alias: str, session: str, worker_id: int) -> None:
        if self.affinity_size <= 0:
            return
        key = (alias, session)
        self._affinity[key] = worker_id
        self._affinity.move_to_end(key)
        while len(self._affinity) > self.affinity_size:
            self._affinity.popitem(last=False)

    def remember(self, alias: str, session: str | None, worker_id: int) -> None:
        """The session's conversation (and KV cache) now lives on worker_id."""
        if session is not None:
            self._remember(alias, session, worker_id)

    # -- bookkeeping ------------------------------------------------------------------------
    def acquire(self, pick: Pick) -> None:
        """The picked call is now in flight on its worker."""
        wid = pick.worker.id
        self.outstanding[wid] += 1
        if pick.batch:
            self.outstanding_batch[wid] = self.outstanding_batch.get(wid, 0) + 1

    def release(self, pick: Pick) -> None:
        """The picked call ended (answered, failed or cancelled)."""
        wid = pick.worker.id
        _decrement(self.outstanding, wid)
        if pick.batch:
            _decrement(self.outstanding_batch, wid)

    def failed(self, worker: WorkerTarget) -> None:
        """Take the worker out for a cool-down: it refused a connection or broke down."""
        if self.cooldown_s > 0:
            self._cool_until[worker.id] = time.monotonic() + self.cooldown_s

    def total_outstanding(self) -> int:
        return sum(self.outstanding.values())


def _decrement(counts: dict[int, int], key: int) -> None:
    """One less for key; keys at zero leave, so the counts hold only busy workers."""
    left = counts.get(key, 0) - 1
    if left <= 0:
        counts.pop(key, None)
    else:
        counts[key] = left
