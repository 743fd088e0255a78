"""Content digests: ``<algorithm>:<hex>`` (SPEC.md General 3). A leaf module."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

# algorithm (a hashlib name) -> length of its lowercase hex digest
ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
# The hex part of each algorithm's digests (also storage directory names), and canonical
# digest strings: both derived from ALGORITHMS.
HEX_RE = {alg: re.compile(f"[0-9a-f]{{{n}}}") for alg, n in ALGORITHMS.items()}
_CANONICAL_RE = re.compile("|".join(f"{alg}:{rx.pattern}" for alg, rx in HEX_RE.items()))
# Digests parsed recently, per process (a Digest is immutable, so sharing one is safe):
# requests and the link files they read name the same digests over and over, and parsing
# costs ~10x a cache hit. Only valid digests are kept (a refusal raises, and lru_cache keeps
# no exceptions), so an entry is at most a sha512 digest string: ~1 MiB in all.
PARSE_CACHE_ENTRIES = 4096
EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class DigestError(ValueError):
    """The string is not a digest this registry accepts (DIGEST_INVALID)."""


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse and validate; raise DigestError for anything not sha256/sha512 lowercase hex."""
        return _parse_cached(value) if cls is Digest else cls._parse(value)

    @classmethod
    def _parse(cls, value: str) -> Digest:
        m = _DIGEST_RE.fullmatch(value)
        if m is None:
            raise DigestError(f"invalid digest format: {value[:150]!r}")
        algorithm, hexpart = m.group(1), m.group(2)
        hex_re = HEX_RE.get(algorithm)
        if hex_re is None:
            raise DigestError(f"unsupported digest algorithm: {algorithm[:32]!r}")
        if hex_re.fullmatch(hexpart) is None:
            raise DigestError(f"invalid {algorithm} digest: {value[:150]!r}")
        return cls(algorithm, hexpart)

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


@lru_cache(maxsize=PARSE_CACHE_ENTRIES)
def _parse_cached(value: str) -> Digest:
    return Digest._parse(value)  # a DigestError is raised again each time, never cached


# Bulk code (garbage collection over 10^5 blobs) handles digests as canonical strings
# ("sha256:<hex>"): a str caches its hash and takes half the memory of a Digest.


def canonical(raw: object) -> str | None:
    """``raw`` if it is a canonical sha256/sha512 digest string, else None."""
    return raw if isinstance(raw, str) and _CANONICAL_RE.fullmatch(raw) else None


def from_canonical(d: str) -> Digest:
    """The Digest of a string :func:`canonical` accepted (not validated again)."""
    alg, _, hexpart = d.partition(":")
    return Digest(alg, hexpart)
