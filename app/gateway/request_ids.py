"""Request ids: random UUIDs (version 4) drawn from the OS's random source in batches.

uuid.uuid4() reads 16 bytes from os.urandom per call, a syscall on every request; one read
of a few kilobytes serves hundreds of ids. The ids stay unguessable: feedback refers to them.
"""

from __future__ import annotations

import os
import uuid

IDS_PER_READ = 256


class RequestIds:
    """Hands out version 4 UUIDs; one per process, owned by the proxy."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def new(self) -> uuid.UUID:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(16 * IDS_PER_READ), 0
        raw = self._pool[self._at : self._at + 16]
        self._at += 16
        # The version and variant bits, as uuid.uuid4() sets them.
        return uuid.UUID(bytes=raw, version=4)
