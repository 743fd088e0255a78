"""RESP2, the Redis wire protocol (https://redis.io/docs/latest/develop/reference/protocol-spec/):
pure encode and incremental decode, no I/O.

Requests are arrays of bulk strings. Replies decode to Python values:

======================  ==========================
``+OK``                 ``"OK"`` (str)
``-ERR text``           :class:`ReplyError` (returned as a value, not raised: one bad reply
                        in a pipeline must not hide the others)
``:42``                 ``42`` (int)
``$3 abc`` / ``$-1``    ``b"abc"`` (bytes) / ``None``
``*2 ...`` / ``*-1``    a list of replies / ``None``
======================  ==========================

:class:`ReplyParser` takes bytes as they arrive (any split) and yields whole replies; a
malformed stream raises :class:`ProtocolError` (the connection is then useless).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeAlias, Union

CRLF = b"\r\n"
MAX_BULK = 512 * 1024 * 1024  # bytes: Redis's own proto-max-bulk-len default
MAX_ARRAY = 1 << 20  # elements; a reply this long from our commands is a broken stream
MAX_LINE = 64 * 1024  # bytes of a type/length/status line before we call the stream broken
# arrays within arrays: our commands' replies nest one or two deep; a deeper stream is
# broken, and parsing it would recurse until Python's RecursionError
MAX_DEPTH = 32

Arg: TypeAlias = bytes | str | int


class ProtocolError(Exception):
    """The byte stream is not RESP2: drop the connection."""


class ReplyError(Exception):
    """An error reply (``-ERR ...``); ``kind`` is its first word (ERR, WRONGTYPE, NOAUTH...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.kind = message.split(" ", 1)[0]


# A decoded reply (module docstring). Union: the recursive alias needs forward references.
Reply: TypeAlias = Union[str, int, bytes, None, list["Reply"], ReplyError]  # noqa: UP007


def _arg(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):  # a bool is an int in Python; Redis has no booleans
        raise TypeError("a Redis argument cannot be a bool")
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"a Redis argument must be bytes, str or int, not {type(value).__name__}")


def encode_command(*args: Arg) -> bytes:
    """One command as a RESP array of bulk strings. Raises TypeError for a bad argument,
    ValueError for no arguments."""
    if not args:
        raise ValueError("a Redis command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        data = _arg(a)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(CRLF)
    return b"".join(parts)


def encode_pipeline(commands: list[tuple[Arg, ...]]) -> bytes:
    return b"".join(encode_command(*c) for c in commands)


class _Incomplete(Exception):
    """Not enough bytes yet for a whole reply."""


class ReplyParser:
    """Incremental RESP2 decoder: :meth:`feed` bytes, then iterate :meth:`replies`."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def replies(self) -> Iterator[Reply]:
        """Every whole reply buffered so far, in order. Raises ProtocolError."""
        while True:
            start = self._pos
            try:
                value = self._parse()
            except _Incomplete:
                self._pos = start
                return
            yield value

    @property
    def pending(self) -> bool:
        """Are bytes of an unfinished reply buffered?"""
        return len(self._buf) > self._pos

    def _line(self) -> bytes:
        end = self._buf.find(CRLF, self._pos)
        if end < 0:
            if len(self._buf) - self._pos > MAX_LINE:
                raise ProtocolError("reply line too long")
            raise _Incomplete
        line = bytes(self._buf[self._pos : end])
        self._pos = end + 2
        return line

    def _int(self, text: bytes) -> int:
        try:
            return int(text)
        except ValueError:
            raise ProtocolError(f"bad integer {text[:32]!r}") from None

    def _parse(self, depth: int = 0) -> Reply:
        if depth > MAX_DEPTH:
            raise ProtocolError(f"arrays nested more than {MAX_DEPTH} deep")
        if self._pos >= len(self._buf):
            raise _Incomplete
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return ReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return self._int(rest)
        if kind == b"$":
            n = self._int(rest)
            if n == -1:
                return None
            if n < 0 or n > MAX_BULK:
                raise ProtocolError(f"bad bulk length {n}")
            if len(self._buf) - self._pos < n + 2:
                raise _Incomplete
            data = bytes(self._buf[self._pos : self._pos + n])
            if self._buf[self._pos + n : self._pos + n + 2] != CRLF:
                raise ProtocolError("bulk string not ended by CRLF")
            self._pos += n + 2
            return data
        if kind == b"*":
            n = self._int(rest)
            if n == -1:
                return None
            if n < 0 or n > MAX_ARRAY:
                raise ProtocolError(f"bad array length {n}")
            return [self._parse(depth + 1) for _ in range(n)]
        raise ProtocolError(f"unknown reply type {kind!r}")
