"""In-memory driver: a verified fake for tests (``storage: inmemory``), passing the same
driver contract suite as the real drivers. Not for production: nothing survives a restart.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any

import trio

from .base import (
    AlreadyExists,
    FileInfo,
    Hasher,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
    check_path,
)

CHUNK = 1024 * 1024


class MemoryDriver:
    name = "inmemory"
    hidden_until_commit = False

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, float]] = {}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MemoryDriver:
        return cls()

    def _is_dir(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return any(k.startswith(prefix) for k in self._files)

    async def get_content(self, path: str) -> bytes:
        check_path(path)
        await trio.lowlevel.checkpoint()
        try:
            return self._files[path][0]
        except KeyError:
            raise PathNotFound(path) from None

    async def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
        check_path(path)
        await trio.lowlevel.checkpoint()
        self._files[path] = (bytes(content), time.time())

    async def create_exclusive(self, path: str, content: bytes) -> None:
        check_path(path)
        await trio.lowlevel.checkpoint()
        if path in self._files or self._is_dir(path):
            if self._files.get(path, (None, 0.0))[0] == content:
                return  # a retry of our own create
            raise AlreadyExists(path)
        self._files[path] = (bytes(content), time.time())

    @asynccontextmanager
    async def reader(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        data = await self.get_content(path)
        if offset < 0 or offset > len(data):
            raise InvalidOffset(path, offset)
        end = len(data) if length is None else min(len(data), offset + length)

        async def chunks() -> AsyncGenerator[bytes]:
            for pos in range(offset, end, CHUNK):
                await trio.lowlevel.checkpoint()
                yield data[pos : min(end, pos + CHUNK)]

        async with aclosing(chunks()) as gen:  # closed even when the caller stops early
            yield gen

    @asynccontextmanager
    async def writer(self, path: str, append: bool = False) -> AsyncIterator[MemoryWriter]:
        check_path(path)
        await trio.lowlevel.checkpoint()
        if not append:
            self._files.pop(path, None)
        w = MemoryWriter(self, path)
        yield w

    async def stat(self, path: str) -> FileInfo:
        check_path(path)
        await trio.lowlevel.checkpoint()
        if path in self._files:
            data, mtime = self._files[path]
            return FileInfo(path, len(data), mtime, False)
        if self._is_dir(path):
            return FileInfo(path, 0, time.time(), True)
        raise PathNotFound(path)

    async def list(self, path: str) -> list[str]:
        if path != "/":
            check_path(path)
        await trio.lowlevel.checkpoint()
        prefix = "/" if path == "/" else path + "/"
        children = {prefix + k[len(prefix):].split("/", 1)[0] for k in self._files if k.startswith(prefix)}
        if not children:
            raise PathNotFound(path)
        return sorted(children)

    async def move(self, src: str, dst: str) -> None:
        check_path(src)
        check_path(dst)
        await trio.lowlevel.checkpoint()
        try:
            self._files[dst] = self._files.pop(src)
        except KeyError:
            raise PathNotFound(src) from None

    async def delete(self, path: str) -> None:
        check_path(path)
        await trio.lowlevel.checkpoint()
        prefix = path + "/"
        keys = [k for k in self._files if k == path or k.startswith(prefix)]
        if not keys:
            raise PathNotFound(path)
        for k in keys:
            del self._files[k]

    async def walk(self, path: str) -> AsyncIterator[FileInfo]:
        prefix = "/" if path == "/" else check_path(path) + "/"
        keys = sorted(k for k in self._files if k.startswith(prefix))
        if not keys and path != "/":
            raise PathNotFound(path)
        for k in keys:
            await trio.lowlevel.checkpoint()
            if k in self._files:
                data, mtime = self._files[k]
                yield FileInfo(k, len(data), mtime, False)

    async def redirect_url(self, path: str, method: str = "GET") -> str | None:
        return None

    async def aclose(self) -> None:
        return None


class MemoryWriter:
    def __init__(self, driver: MemoryDriver, path: str) -> None:
        self._driver = driver
        self._path = path
        self._done = False
        if path not in driver._files:
            driver._files[path] = (b"", time.time())

    @property
    def size(self) -> int:
        return len(self._driver._files.get(self._path, (b"", 0.0))[0])

    async def write(
        self, data: bytes | bytearray | memoryview, hasher: Hasher | None = None
    ) -> None:
        if self._done:
            raise InvalidPath("writer already committed or cancelled")
        await trio.lowlevel.checkpoint()
        old = self._driver._files.get(self._path, (b"", 0.0))[0]
        self._driver._files[self._path] = (old + bytes(data), time.time())
        if hasher is not None:
            hasher.update(data)

    async def commit(self) -> None:
        self._done = True
        await trio.lowlevel.checkpoint()

    async def cancel(self) -> None:
        self._done = True
        self._driver._files.pop(self._path, None)
        await trio.lowlevel.checkpoint()
