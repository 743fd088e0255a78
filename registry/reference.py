"""Repository names and tags (SPEC.md General 3). A leaf module."""

from __future__ import annotations

import re
from functools import lru_cache

NAME_MAX_LENGTH = 255  # distribution's reference.NameTotalLengthMax
TAG_MAX_LENGTH = 128  # what TAG_RE allows
# Names and tags checked recently, per process: every request checks its name (often more
# than once) and a regex costs ~10x a cache hit. Only strings within the length limits are
# kept, so the caches hold at most ~1 MiB whatever clients send.
VALID_CACHE_ENTRIES = 4096
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


def is_valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX_LENGTH and _name_matches(name)


def is_valid_tag(tag: str) -> bool:
    return len(tag) <= TAG_MAX_LENGTH and _tag_matches(tag)


@lru_cache(maxsize=VALID_CACHE_ENTRIES)
def _name_matches(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


@lru_cache(maxsize=VALID_CACHE_ENTRIES)
def _tag_matches(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None
