"""The URL a worker registers: what other hosts (and the gateway) use to reach it."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

WILDCARD_HOSTS = ("", "0.0.0.0", "::")
# Connecting a UDP socket sends nothing; it only asks the kernel which source address the
# route to this (documentation-only, never answered) address would use: the primary one.
ROUTE_PROBE_V4 = ("192.0.2.1", 9)
ROUTE_PROBE_V6 = ("2001:db8::1", 9)


def check_advertise_url(url: str) -> None:
    """Raise ValueError unless url is http(s)://host[:port] with nothing after the host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--advertise-url {url!r} is not http://host[:port]")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"--advertise-url {url!r} has a path; give http://host[:port] only")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"--advertise-url {url!r} has an invalid port") from None


def primary_address(ipv6: bool = False) -> str:
    """This host's address on its default route; the host name when there is no route."""
    family, probe = (socket.AF_INET6, ROUTE_PROBE_V6) if ipv6 else (socket.AF_INET, ROUTE_PROBE_V4)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(probe)
            return str(sock.getsockname()[0])
    except OSError:
        return socket.gethostname()


def advertised_url(host: str, port: int, advertise: str | None = None) -> str:
    """The URL others use to reach a worker bound to host:port.

    advertise (--advertise-url) wins; without a port the bound port is added, so one
    setting serves every worker a supervisor starts on that host.
    """
    if advertise:
        check_advertise_url(advertise)
        parts = urlsplit(advertise)
        netloc = parts.netloc if parts.port is not None else f"{parts.netloc}:{port}"
        return f"{parts.scheme}://{netloc}"
    if host in WILDCARD_HOSTS:
        # 127.0.0.1 would send other hosts to themselves.
        host = primary_address(ipv6=host == "::")
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
