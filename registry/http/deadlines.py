"""How long a client may take: the deadlines of reads and writes on one connection (pure).

:class:`ConnLimits` holds the ``http.headertimeout``, ``bodytimeout``, ``minbodyrate`` and
``maxconnections`` settings; :class:`ReadTimer` decides each read's deadline and whether a
read's outcome means the client is too slow; :func:`write_deadline` bounds one write. No I/O:
the caller passes the time, and tests drive them with tables. conn.RegistryTCPServer uses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import HttpConfig

# File descriptors kept free for everything but client sockets (listeners, epoll, logs, S3
# connections, prometheus files); the default cap then leaves one more per connection for the
# blob file an upload or download holds open.
FD_RESERVE = 64
FDS_PER_CONNECTION = 2
# A default cap, whatever the fd limit (containers often allow 1M): an idle connection with a
# partial head costs ~18 KiB of worker memory (measured: 1,000 of them), one uploading 100s of
# KiB of buffers, so 4096 keep a worker's connection state near 72 MiB while idle.
MAX_DEFAULT_CONNECTIONS = 4096

HEAD, BODY, OTHER = "head", "body", "other"  # what a connection's next read belongs to
# Why a connection was dropped; READ_TIMEOUT is hypercorn's own and not a slow client.
SLOW_HEAD = "request head not complete within http.headertimeout"
STALLED_BODY = "request body idle for http.bodytimeout"
SLOW_BODY = "request body slower than http.minbodyrate"
SLOW_READER = "response not read within http.bodytimeout plus its size at http.minbodyrate"
READ_TIMEOUT = "read timeout"


@dataclass(frozen=True)
class ConnLimits:
    """The limits one server enforces; defaults and meaning as the ``http.headertimeout``,
    ``bodytimeout``, ``minbodyrate`` and ``maxconnections`` keys (config.HttpConfig). Apache's
    mod_reqtimeout (20-40 s, 500 bytes/s) and nginx (client_body_timeout 60 s) are similar;
    docker pushing over a 64 kbit/s link still sends 8 KiB/s."""

    header_timeout: float = HttpConfig.headertimeout  # seconds
    body_timeout: float = HttpConfig.bodytimeout  # seconds
    min_body_rate: int = HttpConfig.minbodyrate  # bytes per second; 0 = only the idle deadline
    max_connections: int = 0  # per worker process; 0 = no cap


# A write of n bytes may take body_timeout + n / rate seconds. With minbodyrate 0 ("only the
# idle deadline"), writes still need some rate: a socket write cannot tell idle from slow.
WRITE_FALLBACK_RATE = 1024  # bytes per second


def write_deadline(limits: ConnLimits, nbytes: int) -> float:
    """Seconds one write of ``nbytes`` to a client may take before the client counts as not
    reading (the same bounds as a request body, in the other direction). A 512 KiB piece of a
    blob at the defaults: 60 s + 512 s."""
    return limits.body_timeout + nbytes / (limits.min_body_rate or WRITE_FALLBACK_RATE)


def default_max_connections(fd_limit: int) -> int:
    """The cap for a process allowed ``fd_limit`` open files: reached before EMFILE."""
    return max(1, min(MAX_DEFAULT_CONNECTIONS, (fd_limit - FD_RESERVE) // FDS_PER_CONNECTION))


class ReadTimer:
    """The deadline of each read on one connection, and whether a read's outcome means the
    client is too slow. Pure: the caller passes the time; durations are seconds spent waiting.

    Call :meth:`deadline` before a read with the phase the connection is in, then
    :meth:`after_wait` with what the read got (``timed_out`` when its deadline expired); a
    reason string from it means: drop the connection.
    """

    def __init__(self, limits: ConnLimits, read_timeout: float = math.inf) -> None:
        self.limits = limits
        self.read_timeout = read_timeout  # hypercorn's cap on any one read
        self.phase = OTHER
        self.cycle = -1  # the request (keep-alive cycle) the phase belongs to
        self.head_started: float | None = None  # when the current head's first byte came
        self.window_wait = 0.0  # seconds waited in the current rate window
        self.window_bytes = 0
        self.quiet = 0.0  # seconds waited since the body's last byte
        self.expiry = READ_TIMEOUT  # what it means when the current deadline expires

    def is_new(self, phase: str, cycle: int) -> bool:
        """The next read starts ``phase`` of request ``cycle`` (the last read was elsewhere)."""
        return (phase, cycle) != (self.phase, self.cycle)

    def deadline(self, phase: str, cycle: int, now: float, buffered: bool = False) -> float:
        """The deadline for the next read; ``buffered``: bytes of the next head are already
        buffered (a pipelined request), so its clock has started."""
        if self.is_new(phase, cycle):
            self.phase, self.cycle = phase, cycle
            self.head_started = now if phase == HEAD and buffered else None
            self.window_wait, self.window_bytes, self.quiet = 0.0, 0, 0.0
        limits = self.limits
        candidates = [(now + self.read_timeout, READ_TIMEOUT)]
        if phase == HEAD and self.head_started is not None:
            candidates.append((self.head_started + limits.header_timeout, SLOW_HEAD))
        elif phase == BODY:
            candidates.append((now + max(0.0, limits.body_timeout - self.quiet), STALLED_BODY))
            window_left = max(0.0, limits.body_timeout - self.window_wait)
            candidates.append((now + window_left, SLOW_BODY))
        when, self.expiry = min(candidates)
        return when

    def after_wait(self, now: float, waited: float, nbytes: int, timed_out: bool) -> str | None:
        """Account a read that waited ``waited`` seconds until ``now`` and got ``nbytes``, or
        whose deadline expired. Returns why to drop the connection, or None."""
        if self.phase == HEAD and nbytes and self.head_started is None:
            self.head_started = now
        if self.phase == BODY:
            self.window_wait += waited
            self.window_bytes += nbytes
            self.quiet = 0.0 if nbytes else self.quiet + waited
            if timed_out and self.expiry == SLOW_BODY:  # the end of a rate window
                self.window_wait = max(self.window_wait, self.limits.body_timeout)
            if self.window_wait >= self.limits.body_timeout:
                if self.window_bytes < self.limits.min_body_rate * self.window_wait:
                    return SLOW_BODY
                self.window_wait, self.window_bytes = 0.0, 0
                if timed_out and self.expiry == SLOW_BODY:
                    return None  # enough bytes came: a new window, same connection
        return self.expiry if timed_out else None
