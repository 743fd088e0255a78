"""The listening sockets for ``http.addr`` (and ``http.debug.addr``), as Go's ``net.Listen``.

registry:3 listens with Go's ``net.Listen("tcp", addr)``: for a wildcard host (``:5000``,
``0.0.0.0:5000``, ``[::]:5000``) Go opens one IPv6 socket with IPV6_V6ONLY off, so IPv4 and
IPv6 clients both reach it, and an IPv4 socket only where the host has no IPv6. Hypercorn
would bind ``0.0.0.0`` (IPv4 only) or ``::`` (IPv6 only where the sysctl
``net.ipv6.bindv6only`` says so): :func:`create_sockets` does what Go does and leaves every
other address to hypercorn.

On such a socket an IPv4 client's address reads ``::ffff:a.b.c.d``; :func:`socket_addr`
gives it back as ``a.b.c.d`` (as Go does), so logs, rate-limit keys and trusted-proxy lists
see the same address as on an IPv4 socket.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from hypercorn.config import Config as HyperConfig
from hypercorn.config import Sockets

DEFAULT_PORT = 5000  # registry:3's
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})  # Go's IP.IsUnspecified()
# The host cannot open or bind an IPv6 socket: listen on IPv4 alone, as Go.
NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); an empty port is DEFAULT_PORT, brackets stay."""
    host, _, port = addr.rpartition(":")
    return host, int(port) if port else DEFAULT_PORT


def bind_address(addr: str) -> str:
    """``addr`` as hypercorn's bind string (a bare ``:port`` binds 0.0.0.0)."""
    host, port = split_addr(addr)
    return f"{host or '0.0.0.0'}:{port}"


def dual_stack_socket(port: int) -> socket.socket | None:
    """A bound, non-blocking, inheritable TCP socket on ``[::]:port`` taking IPv4 too;
    None where the host has no IPv6. Raises OSError for anything else (port in use)."""
    if not socket.has_ipv6:
        return None
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in NO_IPV6:
            return None
        raise
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as hypercorn's sockets
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
    except OSError as exc:
        sock.close()
        if exc.errno in NO_IPV6:
            return None
        raise
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def create_sockets(hc: HyperConfig, addr: str) -> Sockets:
    """Bound (not yet listening) sockets for ``addr``: TLS ones when ``hc`` has TLS.
    A wildcard host gets :func:`dual_stack_socket`; other addresses, and hosts without IPv6,
    hypercorn's ``create_sockets``. Raises OSError when the address cannot be bound."""
    host, port = split_addr(addr)
    sock = dual_stack_socket(port) if host in WILDCARD_HOSTS else None
    if sock is None:
        hc.bind = [bind_address(addr)]
        return hc.create_sockets()
    if hc.ssl_enabled:
        return Sockets(secure_sockets=[sock], insecure_sockets=[], quic_sockets=[])
    return Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])


def socket_addr(family: int, address: Any) -> tuple[str, int] | None:
    """Hypercorn's parse_socket_addr, with IPv4-mapped IPv6 addresses as plain IPv4."""
    if family == socket.AF_INET:
        return (address[0], address[1])
    if family == socket.AF_INET6:
        host = address[0]
        if host.startswith("::ffff:"):
            mapped = ipaddress.IPv6Address(host.split("%", 1)[0]).ipv4_mapped
            if mapped is not None:
                host = str(mapped)
        return (host, address[1])
    return None


def display(host: str, port: int) -> str:
    """``host:port`` for a log line, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
