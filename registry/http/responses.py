"""Responses and the OCI error envelope (SPEC.md General 2).

A leaf of the HTTP layer: handlers and the app both import it, so it imports neither.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ..errors import RegistryError

Headers = list[tuple[bytes, bytes]]
API_VERSION_HEADER = (b"docker-distribution-api-version", b"registry/2.0")  # SPEC General 1


ZEROCOPY = "http.response.zerocopysend"  # the ASGI extension h1server.py offers


@dataclass
class FileBody:
    """A response body sent from an open local file with the ASGI zerocopysend extension:
    ``count`` bytes from ``offset``. The body owns ``file``: :meth:`aclose` closes it (the
    app calls it once the response is sent or abandoned)."""

    file: BinaryIO
    offset: int
    count: int

    async def aclose(self) -> None:
        self.file.close()


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes | AsyncIterator[bytes] | FileBody = b""
    length: int | None = None  # Content-Length when body is an iterator (or HEAD)
    head: bool = False  # send headers only


def json_response(status: int, obj: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    hdrs = [(b"content-type", b"application/json")]
    hdrs.extend(headers)
    return Response(status, hdrs, body)


def error_response(err: RegistryError, head: bool) -> Response:
    """The one place the OCI error envelope is written (SPEC General 2)."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()]
    if head:  # HEAD errors carry no body
        return Response(err.status, headers, b"", length=0, head=True)
    return json_response(err.status, err.to_json(), headers)


def error_answer(err: RegistryError) -> tuple[Headers, bytes]:
    """The headers (API version, the envelope's own, Content-Length) and JSON body of an
    error answered outside the app: a connection past the cap, a WebSocket, an h2c preface."""
    resp = error_response(err, head=False)
    body = resp.body
    assert isinstance(body, bytes)  # error_response with head=False: always JSON bytes
    return [API_VERSION_HEADER, *resp.headers, (b"content-length", b"%d" % len(body))], body
