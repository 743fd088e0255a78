"""The bytes the benchmark pushes: one file of random-looking data, generated per run.

Blobs are windows (offset, length) into this file, so 64 distinct 32 MiB blobs need only
544 MiB on disk, and every body is streamed from the file with sendfile: the client never
holds more than a MiB or so per connection in memory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from .http1 import FileSlice

MiB = 1024 * 1024
GEN_BLOCK = 4 * MiB


def _keystream_blocks(total: int):  # type: ignore[no-untyped-def]
    """AES-CTR over zeros: incompressible, deterministic, and GB/s fast (os.urandom is not)."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        enc = Cipher(algorithms.AES(b"registry-bench-k" * 2), modes.CTR(b"\0" * 16)).encryptor()
        zeros = bytes(GEN_BLOCK)
        for pos in range(0, total, GEN_BLOCK):
            yield enc.update(zeros[: min(GEN_BLOCK, total - pos)])
    except ImportError:
        import random

        rng = random.Random(20240101)
        for pos in range(0, total, GEN_BLOCK):
            yield rng.randbytes(min(GEN_BLOCK, total - pos))


class DataFile:
    """An open data file of ``size`` bytes with cached window digests. Close when done."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        if not path.exists() or path.stat().st_size != size:
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.writelines(_keystream_blocks(size))
            os.replace(tmp, path)
        self.file: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by close())
        self._digests: dict[tuple[int, int], str] = {}

    def slice(self, offset: int, length: int) -> FileSlice:
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"window {offset}+{length} outside data file of {self.size}")
        return FileSlice(self.file, offset, length)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.file.fileno(), length, offset)

    def digest(self, offset: int, length: int) -> str:
        key = (offset, length)
        if key not in self._digests:
            h = hashlib.sha256()
            fd = self.file.fileno()
            pos, end = offset, offset + length
            while pos < end:
                block = os.pread(fd, min(GEN_BLOCK, end - pos), pos)
                h.update(block)
                pos += len(block)
            self._digests[key] = "sha256:" + h.hexdigest()
        return self._digests[key]

    def close(self) -> None:
        self.file.close()
