"""What a decode step costs here, measured as the engine runs, and the batch prompt budget.

A live request arriving mid-step waits for the whole step, so batch prompt work rides in a
step only up to what one plain decode step costs: then live work never waits behind more
than about one step of batch work. What that is in tokens depends on the machine and model
(on this 2-core CPU with the demo model: a decode step of 4 rows ~17 ms, a prompt token
~3 ms), so it is measured, not set: an exponential average of the seconds per decode step
with no prompt tokens in it, and of the seconds per prompt token in decodes that are mostly
prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.job import moving_average

# Before anything is measured: the budgets measured on the 2-core CPU (bench/RESULTS.md).
DEFAULT_LIVE_TOKENS = 8
DEFAULT_IDLE_TOKENS = 16
# With no live work in sight a live request may still arrive mid-step; batch work gets
# this many plain steps' worth per step.
IDLE_STEPS = 2
# Prompt tokens are cut only where exact (prompt_chunks.chunk_end): pieces under 64 rows.
MAX_CUT_TOKENS = 63
# Weight of a new measurement in the averages.
WEIGHT = 0.1
# Decodes with fewer prompt tokens than this say little about the cost of one.
MIN_PROMPT_SAMPLE = 8


@dataclass
class StepCosts:
    """Running averages of the cost of a decode step and of a prompt token, in seconds."""

    step_s: float | None = None
    token_s: float | None = None

    def record(self, prompt_tokens: int, rows: int, seconds: float) -> None:
        """One llama_decode of prompt_tokens prompt tokens and rows one-token rows."""
        if prompt_tokens == 0 and rows > 0:
            self.step_s = moving_average(self.step_s, seconds, WEIGHT)
        elif prompt_tokens >= MIN_PROMPT_SAMPLE:
            # The rows ride in the first micro-batch; what is left is the prompt's cost.
            rest = seconds - (self.step_s or 0.0) if rows else seconds
            if rest > 0:
                self.token_s = moving_average(self.token_s, rest / prompt_tokens, WEIGHT)

    def batch_tokens(self, live_load: bool) -> int:
        """Batch prompt tokens one step may carry: one plain step's cost (IDLE_STEPS of
        them with no live work in sight), at least one token."""
        if self.step_s is None or self.token_s is None:
            return DEFAULT_LIVE_TOKENS if live_load else DEFAULT_IDLE_TOKENS
        steps = 1 if live_load else IDLE_STEPS
        return max(1, min(MAX_CUT_TOKENS, int(steps * self.step_s / self.token_s)))
