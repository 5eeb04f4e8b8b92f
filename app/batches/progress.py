"""How far a batch is: share done, lines per second since it started, time left."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from app.batches.records import BatchView


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    elapsed_s: float | None
    lines_per_s: float | None
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def progress(view: BatchView, now: datetime | None = None) -> Progress:
    """The batch's progress; throughput and ETA once it has run and finished a line."""
    start = view.in_progress_at
    end = next(
        (t for t in (view.completed_at, view.cancelled_at, view.expired_at, view.failed_at) if t),
        None,
    )
    if start is None:
        return Progress(view.done, view.total, None, None, None)
    elapsed = ((end or now or datetime.now(UTC)) - start).total_seconds()
    rate = view.done / elapsed if elapsed > 0 and view.done else None
    left = view.total - view.done
    eta = 0.0 if view.finished else (left / rate if rate else None)
    return Progress(view.done, view.total, elapsed, rate, eta)


def resends(view: BatchView) -> str:
    """The calls beyond one per line, in words ("2 resends"): lines sent to the fleet again
    (a 5xx retried, an answer lost with its runner or gateway)."""
    return f"{view.resends} resend" + ("" if view.resends == 1 else "s")


def describe(view: BatchView) -> str:
    """One line for the CLI: status, counts, throughput, ETA."""
    p = progress(view)
    parts = [
        f"{view.id} {view.status}",
        f"{p.done}/{p.total} done ({view.completed} completed, {view.failed} failed"
        + (f", {view.cancelled} not sent" if view.cancelled else "")
        + (f", {resends(view)}" if view.resends else "")
        + ")",
    ]
    if p.lines_per_s:
        parts.append(f"{p.lines_per_s:.2f} lines/s")
    if p.eta_s and not view.finished:
        parts.append(f"ETA {p.eta_s:.0f} s")
    return ", ".join(parts)
