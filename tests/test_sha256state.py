"""sha256state: a SHA-256 whose state is saved and loaded in Go's (the reference's) format."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.storage.sha256state import STATE_SIZE, InvalidState, Sha256

pytestmark = pytest.mark.usefixtures("resumable_sha256")

BUFFERS = ("bytes", "bytearray", "memoryview", "readonly-slice")


def as_buffer(kind: str, piece: bytes) -> bytes | bytearray | memoryview:
    if kind == "bytes":
        return piece
    if kind == "bytearray":
        return bytearray(piece)
    if kind == "memoryview":
        return memoryview(bytearray(b"--" + piece))[2:]
    return memoryview(b"-" + piece)[1:]  # read-only, not at the start of its object


@settings(max_examples=150, deadline=None)
@given(
    pieces=st.lists(
        st.tuples(st.binary(max_size=300), st.sampled_from(BUFFERS), st.booleans()), max_size=12
    )
)
def test_matches_hashlib_through_any_split_buffer_type_and_save_load(
    pieces: list[tuple[bytes, str, bool]],
) -> None:
    h, want, total = Sha256(), hashlib.sha256(), 0
    for piece, kind, reload in pieces:
        h.update(as_buffer(kind, piece))
        want.update(piece)
        total += len(piece)
        if reload:
            state = h.marshal()
            assert len(state) == STATE_SIZE
            h = Sha256.unmarshal(state)
        assert h.length == total
    assert h.hexdigest() == want.hexdigest()
    assert h.digest() == want.digest()


def test_digest_does_not_end_the_hash_and_copies_are_independent() -> None:
    h = Sha256()
    h.update(b"abc")
    assert h.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    c = h.copy()
    c.update(b"def")
    h.update(b"xyz")
    assert c.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    assert h.hexdigest() == hashlib.sha256(b"abcxyz").hexdigest()


def test_state_layout_is_gos_marshal_binary() -> None:
    """"sha\\x03", the 8 words big-endian, the block buffer zero-padded, the length."""
    h = Sha256()
    data = b"q" * 70  # one full block hashed, 6 bytes pending
    h.update(data)
    state = h.marshal()
    assert state[:4] == b"sha\x03"
    assert state[36:42] == b"q" * 6 and state[42:100] == bytes(58)
    assert struct.unpack(">Q", state[100:])[0] == 70
    fresh = Sha256().marshal()  # the initial state: SHA-256's IV
    assert struct.unpack(">8I", fresh[4:36])[0] == 0x6A09E667


@pytest.mark.parametrize(
    "state",
    [
        b"",
        b"sha\x03" + bytes(100),  # short
        b"sha\x02" + bytes(104),  # SHA-224's magic
        b"md5\x01" + bytes(104),
        b"sha\x03" + bytes(32) + b"\x01" + bytes(63) + struct.pack(">Q", 0),  # junk past the end
        b"sha\x03" + bytes(96) + struct.pack(">Q", 1 << 62),  # a length no hash can have
    ],
)
def test_unmarshal_refuses_what_is_not_a_sha256_state(state: bytes) -> None:
    with pytest.raises(InvalidState):
        Sha256.unmarshal(state)
