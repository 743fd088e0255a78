"""A SHA-256 whose state can be saved and loaded, in the reference's (Go's) format.

Why: ``Uploads`` hashes each upload as it arrives, but hashlib's state lives only in the
process that made it. When a PATCH and the final PUT land on different worker processes
or replicas (docker's pushes did so for 2-4 of 5 layers with two workers), the PUT had
to read the whole upload back and hash it again: from disk, or from S3 over the network.
The reference saves the state after each PATCH at ``_uploads/<uuid>/hashstates/sha256/
<offset>`` and so do we now, byte for byte in the same format: an upload the
reference started is finished here without reading it back (the reference itself only
continues uploads whose URL carries its own signed ``_state``).

The state is OpenSSL's own SHA256_CTX, driven through ctypes (the same assembly hashlib
uses, at the same speed; ctypes drops the GIL while it hashes). Go's
``crypto/sha256`` MarshalBinary format is ``"sha\\x03"``, the eight state words
big-endian, the 64-byte block buffer (unused bytes zero), then the byte count
big-endian (108 bytes). :func:`available` is False when libcrypto lacks the functions
(a future OpenSSL may drop them); callers then keep hashlib and re-hash when needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
from typing import Any

MAGIC = b"sha\x03"
STATE_SIZE = len(MAGIC) + 8 * 4 + 64 + 8  # 108


class _Ctx(ctypes.Structure):
    # <openssl/sha.h> SHA256_CTX: SHA_LONG h[8]; SHA_LONG Nl, Nh; SHA_LONG data[16];
    # unsigned int num, md_len. ``data`` holds the pending block as raw bytes.
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint8 * 64),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


def _load() -> Any:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("crypto") or "libcrypto.so.3")
        init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
    except (OSError, AttributeError):
        return None
    init.argtypes = (ctypes.c_void_p,)
    update.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    final.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    for fn in (init, update, final):
        fn.restype = ctypes.c_int
    return lib


_lib = _load()


def available() -> bool:
    return _lib is not None


class InvalidState(ValueError):
    """Bytes that are not a marshalled SHA-256 state."""


class Sha256:
    """hashlib-like (``update``, ``digest``, ``hexdigest``, ``copy``) plus ``length``,
    ``marshal()`` and ``unmarshal()``. Requires :func:`available`."""

    name = "sha256"
    digest_size = 32

    def __init__(self) -> None:
        if _lib is None:
            raise RuntimeError("libcrypto's SHA256 functions are not available")
        self._ctx = _Ctx()
        _lib.SHA256_Init(ctypes.byref(self._ctx))

    @property
    def length(self) -> int:
        """Bytes hashed so far."""
        return ((self._ctx.Nh << 32) | self._ctx.Nl) >> 3

    def update(self, data: bytes | bytearray | memoryview) -> None:
        assert _lib is not None
        if type(data) is bytes:
            _lib.SHA256_Update(ctypes.byref(self._ctx), data, len(data))  # its own buffer
            return
        view = memoryview(data)
        if not view.nbytes:
            return
        if view.readonly or not view.c_contiguous:  # e.g. a slice of bytes: rare, copied
            self.update(view.tobytes())
            return
        first = ctypes.c_char.from_buffer(view)  # pins the buffer while it lives
        _lib.SHA256_Update(ctypes.byref(self._ctx), ctypes.addressof(first), view.nbytes)

    def copy(self) -> Sha256:
        other = Sha256.__new__(Sha256)
        other._ctx = _Ctx()
        ctypes.pointer(other._ctx)[0] = self._ctx
        return other

    def digest(self) -> bytes:
        out = (ctypes.c_uint8 * 32)()
        tmp = self.copy()
        assert _lib is not None
        _lib.SHA256_Final(out, ctypes.byref(tmp._ctx))
        return bytes(out)

    def hexdigest(self) -> str:
        return self.digest().hex()

    def marshal(self) -> bytes:
        """Go's crypto/sha256 MarshalBinary bytes of this state."""
        ctx = self._ctx
        pending = bytes(ctx.data)[: ctx.num]
        return b"".join(
            (
                MAGIC,
                struct.pack(">8I", *ctx.h),
                pending.ljust(64, b"\0"),
                struct.pack(">Q", self.length),
            )
        )

    @classmethod
    def unmarshal(cls, state: bytes) -> Sha256:
        """The hasher saved by :meth:`marshal` (or by Go); InvalidState if it is not one."""
        if len(state) != STATE_SIZE or not state.startswith(MAGIC):
            raise InvalidState(f"not a sha256 state ({len(state)} bytes)")
        words = struct.unpack(">8I", state[4:36])
        block = state[36:100]
        (length,) = struct.unpack(">Q", state[100:108])
        num = length % 64
        if length >> 61 or any(block[num:]):
            raise InvalidState("inconsistent sha256 state")
        h = cls()
        ctx = h._ctx
        for i, w in enumerate(words):
            ctx.h[i] = w
        bits = length * 8
        ctx.Nl, ctx.Nh = bits & 0xFFFFFFFF, bits >> 32
        ctypes.memmove(ctx.data, block, 64)
        ctx.num = num
        return h
