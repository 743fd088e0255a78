"""Repository names and tags (SPEC.md General 3). A leaf module."""

from __future__ import annotations

import re

NAME_MAX_LENGTH = 255  # distribution's reference.NameTotalLengthMax
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


def is_valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX_LENGTH and NAME_RE.fullmatch(name) is not None


def is_valid_tag(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None
