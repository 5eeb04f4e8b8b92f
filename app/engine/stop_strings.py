"""Find stop strings in streamed text without ever sending part of one to the client."""

from __future__ import annotations


class StopMatcher:
    """Feed text as it is generated; get back what is safe to emit and whether a stop hit.

    Text that could be the start of a stop string is held back until the next feed decides.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self._pending += text
        if not self._stops:
            out, self._pending = self._pending, ""
            return out, False
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            out = self._pending[: min(hits)]
            self._pending = ""
            return out, True
        hold = self._held_back()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def _held_back(self) -> int:
        """Length of the longest tail of pending text that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out
