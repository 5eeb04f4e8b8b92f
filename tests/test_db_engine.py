"""The SQLAlchemy engine Herd builds: a server that never answers is an error in bounded
time, not a connect that hangs a process (a batch runner) forever."""

from __future__ import annotations

import socket
import time

import pytest
from sqlalchemy.exc import OperationalError

from app.db.engine import CONNECT_TIMEOUT_S, make_engine


def test_a_server_that_never_answers_times_out() -> None:
    # Accepts TCP connections (the kernel's backlog) but never speaks PostgreSQL.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        engine = make_engine(f"postgresql://herd@127.0.0.1:{port}/herd")
        began = time.monotonic()
        with pytest.raises(OperationalError, match="timeout"):
            engine.connect().close()
        took_s = time.monotonic() - began
        engine.dispose()
    assert CONNECT_TIMEOUT_S - 1 <= took_s < CONNECT_TIMEOUT_S + 20


def test_a_connect_timeout_in_the_url_wins() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        engine = make_engine(f"postgresql://herd@127.0.0.1:{port}/herd?connect_timeout=2")
        began = time.monotonic()
        with pytest.raises(OperationalError):
            engine.connect().close()
        took_s = time.monotonic() - began
        engine.dispose()
    assert 1 <= took_s < CONNECT_TIMEOUT_S - 2
