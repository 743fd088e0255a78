"""The 401 answer: a ``WWW-Authenticate`` challenge (RFC 9110 11.6.1) on UNAUTHORIZED."""

from __future__ import annotations

from ..errors import ErrorCode, RegistryError


def quote_param(value: str) -> str:
    """A quoted-string for a challenge parameter (RFC 9110 5.6.4)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unauthorized(challenge: str, message: str = "authentication required") -> RegistryError:
    return RegistryError(ErrorCode.UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge})
