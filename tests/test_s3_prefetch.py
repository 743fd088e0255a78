"""S3 reader prefetch (registry/drivers/s3/reader.Prefetched): pieces read ahead are joined
when they pile up, in order, never past JOIN_BYTES by more than one piece, and an error of
the stream reaches the consumer after every byte that came before it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from registry.drivers.s3.reader import JOIN_BYTES, Prefetched


class Broken(Exception):
    pass


def _source(pieces: list[bytes], fail: bool) -> Any:
    async def gen() -> AsyncIterator[bytes]:
        for p in pieces:
            yield p
        if fail:
            raise Broken("connection reset")

    return gen()


@pytest.mark.parametrize("fail", [False, True])
@pytest.mark.parametrize("slow_consumer", [False, True])
async def test_pieces_arrive_in_order_joined_and_errors_come_last(fail, slow_consumer):
    pieces = [bytes([i % 251]) * (1000 + 37 * i) for i in range(300)]
    got: list[bytes] = []
    error = None
    async with trio.open_nursery() as nursery:
        it = Prefetched(_source(pieces, fail), nursery)  # type: ignore[arg-type]
        try:
            async for chunk in it:
                got.append(chunk)
                if slow_consumer:
                    await trio.sleep(0.001)  # let the reader run ahead and pile up pieces
        except Broken as exc:
            error = exc
    assert b"".join(got) == b"".join(pieces)
    assert (error is not None) == fail
    assert all(len(c) < JOIN_BYTES + max(map(len, pieces)) for c in got)
    if slow_consumer:
        assert len(got) < len(pieces)  # joined: fewer sends than pieces
