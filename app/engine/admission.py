"""Which waiting jobs of the batched engine get a slot at a step, and which batch jobs yield.

Priority classes (requests.Priority): live traffic must never wait for offline batch work, yet
the batch should use whatever capacity live traffic leaves. The rules, and why:
- The waiting queue has one lane per class (waiting.py); interactive requests start first, batch
  ones only take slots that are free after every waiting interactive request has one, and
  while live requests run, and for LIVE_QUIET_S after, they leave one slot free for the next
  live arrival (4+ slots).
- When an interactive request waits and no slot is free, a running batch job is preempted
  between two steps: its slot goes to the interactive request at once, so that request's first
  token waits at most for the step in flight, never for a batch completion. Reserving slots
  for live traffic instead would leave them idle whenever it is quiet.
- The preempted job keeps its sampler chain (grammar state, penalty history, seeded RNG),
  stop matcher and counters, and goes back to the head of the batch lane. When a slot frees
  it resumes: the slot's KV is rebuilt to prompt + tokens generated so far (reusing any cached
  prefix, like a new prompt), then it decodes its pending token as if nothing happened. The
  client sees one stream with the usage of an unpreempted run. Recomputing the KV costs one
  prefill, far cheaper per token than the decodes it replays; swapping KV out of the context
  would cost memory and copies on every preemption instead.
- The victim is the youngest running batch job (latest submitted): the oldest batch work
  keeps its slot longest, so every batch job finishes once live load leaves spare slots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.engine.batch_job import BatchJob, Running
from app.engine.waiting import WaitingQueue

# Slots batch jobs leave free while interactive requests run or ran within LIVE_QUIET_S
# seconds (see admit): between two live calls a batch job taking that slot would be
# preempted by the next one, and each preemption costs the job a re-prefill.
LIVE_HEADROOM_SLOTS = 1
LIVE_QUIET_S = 1.0


@dataclass(frozen=True)
class Admission:
    """What admit decided: jobs to start, jobs taken off their slots, when live work was seen."""

    admitted: list[BatchJob]
    preempted: list[Running]
    live_at: float


def admit(
    waiting: WaitingQueue[BatchJob], running: list[Running], n_slots: int, live_at: float
) -> Admission:
    """Take waiting jobs for the free slots, preempting batch jobs for interactive ones that
    would otherwise wait (the caller holds the queue's lock); live_at is when live work was
    last running or admitted."""
    free = n_slots - len(running)
    preempted = preempt(waiting, running, waiting.count("interactive") - free)
    free += len(preempted)
    admitted: list[BatchJob] = []
    while len(admitted) < free and (job := waiting.pop("interactive")) is not None:
        admitted.append(job)
    # While live requests run, one slot stays free for the next one: taking a batch
    # job's slot costs that job a re-prefill, and under steady live traffic preempting
    # on every arrival would spend more on re-prefills than the extra slot yields.
    # With under 4 slots one slot is too big a share of the capacity to hold back.
    now = time.perf_counter()
    if any(r.job.priority == "interactive" for r in running) or admitted:
        live_at = now
    live = now - live_at <= LIVE_QUIET_S
    room = free - (LIVE_HEADROOM_SLOTS if live and n_slots >= 4 else 0)
    while len(admitted) < room and (job := waiting.pop("batch")) is not None:
        admitted.append(job)
    return Admission(admitted, preempted, live_at)


def preempt(waiting: WaitingQueue[BatchJob], running: list[Running], short: int) -> list[Running]:
    """Suspend up to short running batch jobs, youngest first, back to the head of their
    lane; returns them."""
    if short <= 0:
        return []
    # Cancelled ones free their slot this step anyway.
    victims = [
        r for r in running if r.job.priority == "batch" and not r.job.cancel_requested.is_set()
    ]
    victims.sort(key=lambda r: r.job.submitted_at, reverse=True)
    preempted = victims[:short]
    # The oldest victim goes back last, so it ends up first in line.
    for r in reversed(preempted):
        suspend(r)
        waiting.put_back(r.job)
    return preempted


def suspend(r: Running) -> None:
    """Take r off its slot, keeping what it needs to resume.

    The slot's KV stays as a prefix cache: if no one overwrites it, r resumes for free.
    """
    if r.prefilled == len(r.tokens):
        # Generating: the pending token is decoded after the resumed KV, as it would be.
        r.tokens = list(r.slot.kv_tokens)
    r.slot.busy = False
    r.row = None
    r.job.suspended = r
