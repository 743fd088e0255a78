"""htpasswd authentication, as the reference registry's ``auth.htpasswd`` (SPEC.md Auth 27).

The file holds ``user:hash`` lines; blank lines and lines starting with ``#`` are skipped
(the reference's parser). Only bcrypt hashes (``$2a$``, ``$2b$``, ``$2y$``; ``htpasswd -B``)
count: any other entry never authenticates, and a warning names the user once per load.

Contracts:

- :class:`HtpasswdFile` loads the file at construction and raises :class:`HtpasswdError`
  (one line, naming the path) when it is missing, unreadable or malformed, so a bad file is
  a startup error. Afterwards :meth:`HtpasswdFile.current` re-reads it when its
  (mtime, size, inode) changes; a re-read that fails keeps the previous entries and logs.
- :class:`BasicVerifier` checks ``Authorization: Basic`` headers. bcrypt blocks the CPU for
  ~100 ms at cost 10, so it runs in a worker thread under a small CapacityLimiter. A user
  the file does not know, or whose entry is not bcrypt, is checked against a dummy bcrypt
  hash of the same cost, so a wrong user name costs what a wrong password costs.
- Successful verifications are cached in-process for ``CACHE_TTL_S``, keyed by the SHA-256
  of the whole Authorization header together with the file's version: a docker push of many
  layers pays bcrypt once, not once per request, and editing the file (a new version)
  invalidates every cached entry at once. Failures are never cached. The cache is per
  worker process, bounded by ``CACHE_MAX_ENTRIES``, and holds digests, never passwords.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass

import bcrypt
import trio

log = logging.getLogger("registry.auth")

BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
BCRYPT_MAX_PASSWORD = 72  # bytes; bcrypt ignores the rest, the bcrypt package refuses it
DEFAULT_COST = 10  # htpasswd -B's default, used for the dummy hash of an empty file
CACHE_TTL_S = 60.0  # a push or pull of many layers re-sends the same header for a minute
CACHE_MAX_ENTRIES = 1024  # distinct (header, file version) pairs remembered per worker
BCRYPT_THREADS = 4  # bcrypt checks at once per worker; more only queue for the 2 cores


class HtpasswdError(Exception):
    """The htpasswd file cannot be used; the message is one line naming the path."""


@dataclass(frozen=True)
class Entries:
    """One load of the file: users to bcrypt hashes, and a version that changes per load."""

    users: dict[str, bytes]
    version: str
    dummy: bytes  # a bcrypt hash of a random password at the file's usual cost


def parse_htpasswd(text: str, path: str = "htpasswd") -> dict[str, bytes]:
    """``user:hash`` lines into a mapping; raises HtpasswdError for a line without ``:``.

    Non-bcrypt entries are kept (they can never match) so that the user still exists for
    timing purposes; :func:`usable` tells them apart.
    """
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise HtpasswdError(f"{path}: invalid entry at line {number} (expected user:hash)")
        users[user] = hashed.strip().encode("utf-8")
    return users


def usable(hashed: bytes) -> bool:
    return hashed.startswith(BCRYPT_PREFIXES)


def _cost(hashed: bytes) -> int:
    try:
        return int(hashed[4:6])
    except ValueError:
        return DEFAULT_COST


def _make_dummy(users: dict[str, bytes]) -> bytes:
    """A bcrypt hash at the most common cost in the file, so unknown users take as long."""
    costs = [_cost(h) for h in users.values() if usable(h)]
    cost = max(set(costs), key=costs.count) if costs else DEFAULT_COST
    cost = min(max(cost, 4), 31)
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))


class HtpasswdFile:
    """The htpasswd file at ``path``, re-read when it changes. Raises HtpasswdError."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._entries = self._load()
        self._reload_lock = trio.Lock()

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> Entries:
        try:
            stamp = self._stat()
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise HtpasswdError(
                f"{self.path}: cannot read the htpasswd file: {exc.strerror or exc}"
            ) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise HtpasswdError(f"{self.path}: the htpasswd file is not UTF-8 text") from None
        users = parse_htpasswd(text, self.path)
        for user, hashed in users.items():
            if not usable(hashed):
                log.warning("htpasswd %s: entry for %r is not bcrypt; it never matches",
                            self.path, user)
        self._stamp = stamp
        version = hashlib.sha256(b"%d:%d:%d:" % stamp + data).hexdigest()[:16]
        return Entries(users, version, _make_dummy(users))

    async def current(self) -> Entries:
        """The entries, re-read first (in a thread) if the file changed since the last load."""
        try:
            stamp = self._stat()
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return self._entries
        async with self._reload_lock:
            if stamp == self._stamp:  # another request re-read it while we waited
                return self._entries
            try:
                self._entries = await trio.to_thread.run_sync(self._load)
                log.info("htpasswd %s re-read: %d users", self.path, len(self._entries.users))
            except HtpasswdError as exc:
                log.error("%s; keeping the previous entries", exc)
                self._stamp = stamp  # do not retry on every request until it changes again
        return self._entries


def parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """(user, password) from ``Basic <base64(user:password)>``, or None for any other shape."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip().encode("ascii"), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password.encode("utf-8")


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a malformed hash
        return False


class BasicVerifier:
    """Verifies Basic credentials against an :class:`HtpasswdFile` (see the module doc)."""

    def __init__(self, file: HtpasswdFile) -> None:
        self.file = file
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._limiter = trio.CapacityLimiter(BCRYPT_THREADS)

    async def verify(self, header: str | None) -> str | None:
        """The user name when ``header`` carries valid credentials, else None. Never raises
        for a bad header."""
        if not header:
            return None
        entries = await self.file.current()
        # The cache first: only headers that verified are in it, so a hit needs no parsing.
        key = hashlib.sha256(
            entries.version.encode() + b"\0" + header.encode("utf-8", "surrogateescape")
        ).digest()
        now = trio.current_time()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[1] > now:
                self._cache.move_to_end(key)
                return hit[0]
            del self._cache[key]
        creds = parse_basic(header)
        if creds is None:
            return None
        user, password = creds
        hashed = entries.users.get(user)
        known = hashed is not None and usable(hashed)
        if len(password) > BCRYPT_MAX_PASSWORD:
            # bcrypt cannot tell such passwords apart past 72 bytes; refuse them, at the
            # usual cost so the answer time says nothing.
            password, known = password[:BCRYPT_MAX_PASSWORD], False
        target = hashed if known and hashed is not None else entries.dummy
        ok = await trio.to_thread.run_sync(_check, password, target, limiter=self._limiter)
        if not (ok and known):
            return None
        self._cache[key] = (user, now + CACHE_TTL_S)
        while len(self._cache) > CACHE_MAX_ENTRIES:
            self._cache.popitem(last=False)
        return user
