"""Listening sockets for Herd's HTTP servers, bound before uvicorn takes them."""

from __future__ import annotations

import socket


def bind_listen_socket(host: str, port: int) -> socket.socket:
    """Bind host:port now, so port 0 becomes a real port before anyone advertises it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this. Without it, a socket handed to uvicorn sends
        # each response body behind Nagle's algorithm: +40 ms per call (delayed ACKs).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
