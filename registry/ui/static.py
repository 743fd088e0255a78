"""The web UI's files: read once at start-up, served from memory with content-hash names.

:func:`load_assets` reads every file of a directory (by default the package's ``static/``
through importlib.resources, so it works from a wheel or a zip) and returns
:class:`Assets`: each file under its own name (``app.js``, served ``Cache-Control:
no-cache``) and under a hashed name (``app.<sha256-12hex>.js``, served ``public,
max-age=31536000, immutable``: its bytes can never change under that name). In
``index.html`` every ``/ui/assets/<file>`` reference to a file that exists is rewritten to
``<prefix>/ui/assets/<hashed name>``, so a new release is fetched at once while an unchanged
file stays cached. Every file has a strong ETag (its SHA-256); ``If-None-Match`` answers 304.

No file at all (an install without the front end) is not an error: pages and assets then
answer 404 like an unknown path.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .headers import IMMUTABLE, NO_CACHE

INDEX = "index.html"
HASH_HEX = 12  # hex digits of SHA-256 in a hashed name: 48 bits, no collision in a release
# A served file name: one path component, nothing a browser could read as a directory.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_FILE_BYTES = 4 * 1024 * 1024  # a front-end file past this is a packaging mistake
CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One servable file: its bytes, type, strong ETag and Cache-Control."""

    body: bytes
    content_type: str
    etag: str  # quoted, as sent
    cache_control: bytes

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", self.content_type.encode()),
            (b"cache-control", self.cache_control),
            (b"etag", self.etag.encode()),
        ]

    def matches(self, if_none_match: str | None) -> bool:
        """Does ``If-None-Match`` name this file (RFC 9110 13.1.2: weak comparison)?"""
        if not if_none_match:
            return False
        if if_none_match.strip() == "*":
            return True
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return self.etag in tags


@dataclass(frozen=True)
class Assets:
    """The UI's files by served name (plain and hashed), and the page (index.html)."""

    files: Mapping[str, Asset]
    index: Asset | None
    hashed: Mapping[str, str]  # plain name -> hashed name

    def get(self, name: str) -> Asset | None:
        return self.files.get(name)


def hashed_name(name: str, body: bytes) -> str:
    stem, dot, ext = name.rpartition(".")
    digest = hashlib.sha256(body).hexdigest()[:HASH_HEX]
    return f"{stem}.{digest}.{ext}" if dot and stem else f"{name}.{digest}"


def _asset(body: bytes, name: str, cache_control: bytes) -> Asset:
    ext = name[name.rfind(".") :] if "." in name else ""
    ctype = CONTENT_TYPES.get(ext.lower(), "application/octet-stream")
    return Asset(body, ctype, f'"{hashlib.sha256(body).hexdigest()}"', cache_control)


def _read_dir(directory: Any) -> dict[str, bytes]:
    """name -> bytes of the regular files directly in ``directory`` (a Path or an
    importlib.resources Traversable); {} when it does not exist."""
    out: dict[str, bytes] = {}
    try:
        if not directory.is_dir():
            return out
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        if entry.is_file() and _FILE_NAME.fullmatch(entry.name):
            data = entry.read_bytes()
            if len(data) <= MAX_FILE_BYTES:
                out[entry.name] = data
    return out


def package_static() -> Any:
    """The package's ``static/`` directory (a Traversable)."""
    return importlib.resources.files(__package__ or "registry.ui").joinpath("static")


def load_assets(directory: Path | Any | None = None, prefix: str = "") -> Assets:
    """Every file of ``directory`` (default: the package's ``static/``) as :class:`Assets`,
    with ``index.html``'s asset references rewritten under ``prefix`` (http.prefix)."""
    raw = _read_dir(package_static() if directory is None else directory)
    files: dict[str, Asset] = {}
    hashed: dict[str, str] = {}
    for name, body in raw.items():
        if name == INDEX:
            continue
        files[name] = _asset(body, name, NO_CACHE)
        hashed[name] = hashed_name(name, body)
        files[hashed[name]] = _asset(body, name, IMMUTABLE)
    index = None
    if INDEX in raw:
        page = rewrite_references(raw[INDEX].decode("utf-8"), hashed, prefix).encode()
        index = _asset(page, INDEX, NO_CACHE)
    return Assets(files, index, hashed)


_REFERENCE = re.compile(r"/ui/assets/([A-Za-z0-9][A-Za-z0-9._-]*)")


def rewrite_references(page: str, hashed: Mapping[str, str], prefix: str = "") -> str:
    """``page`` with each ``/ui/assets/<file>`` of a known file replaced by its hashed URL
    under ``prefix``; unknown files keep their name (and then answer 404)."""

    def swap(m: re.Match[str]) -> str:
        name = m.group(1)
        return f"{prefix}/ui/assets/{hashed.get(name, name)}"

    return _REFERENCE.sub(swap, page)
