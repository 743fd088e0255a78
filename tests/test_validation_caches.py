"""Names, tags and digests are validated through small per-process caches (issue 14, item 4):
the answers are the uncached ones, failures are never remembered as successes, and what a
client can push into the caches is bounded in count and length. Pure."""

from __future__ import annotations

import pytest

from registry import digest, reference
from registry.digest import Digest, DigestError

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize("value", [
    "sha256:" + HEX, "sha512:" + HEX * 2,
])
def test_a_valid_digest_parses_the_same_every_time(value: str) -> None:
    first, second = Digest.parse(value), Digest.parse(value)
    assert first == second == Digest(value.split(":")[0], value.split(":")[1])


@pytest.mark.parametrize("value", [
    "sha256:" + HEX.upper(), "sha256:" + HEX[:-1], "md5:" + HEX, "sha256:" + HEX + "0",
    "sha256:" + HEX + "0" * 10_000, "", ":",
])
def test_an_invalid_digest_is_refused_every_time(value: str) -> None:
    for _ in range(3):
        with pytest.raises(DigestError):
            Digest.parse(value)


def test_names_and_tags_answer_as_their_patterns_every_time() -> None:
    for _ in range(2):
        assert reference.is_valid_name("team/app")
        assert not reference.is_valid_name("Team/app")
        assert not reference.is_valid_name("a" * 256)
        assert reference.is_valid_name("a" * 255)
        assert reference.is_valid_tag("v1.0_rc-1")
        assert not reference.is_valid_tag(".hidden")
        assert reference.is_valid_tag("t" * 128)
        assert not reference.is_valid_tag("t" * 129)


def test_what_clients_send_is_cached_only_within_bounds() -> None:
    caches = (reference._name_matches, reference._tag_matches, digest._parse_cached)
    assert [c.cache_info().maxsize for c in caches] == [
        reference.VALID_CACHE_ENTRIES, reference.VALID_CACHE_ENTRIES, digest.PARSE_CACHE_ENTRIES
    ]
    before = [c.cache_info().currsize for c in caches]
    huge = "a" * 100_000  # a long request path: never a key of any cache
    assert not reference.is_valid_name(huge)
    assert not reference.is_valid_tag(huge)
    with pytest.raises(DigestError):
        Digest.parse("sha256:" + huge)
    assert [c.cache_info().currsize for c in caches] == before
