"""One writer per upload session, across workers and replicas: a lease kept in storage.

Why: two requests appending to one session at once (a PATCH on one worker and a PUT on
another) each hash only their own bytes while both land in the same data, so a PUT could
publish mixed bytes under a digest they do not have (issue 12). An in-process lock cannot
see the other workers; the lease can, because it lives where the session lives.

The lease is ``_uploads/<uuid>/lease`` (paths.upload_lease), a small JSON object
``{"token": <random hex>, "expires": <epoch seconds>}``. It goes away with the session.

- Taking it: ``Driver.create_exclusive`` (link(2) on a filesystem, a conditional PUT on
  S3/R2): of two takers exactly one wins; the other raises :class:`SessionBusy`.
- A holder renews it every ``ttl / 3`` while its request runs, so a slow client is never
  cut off by expiry, and deletes it when the request ends (shielded, bounded).
- A holder that crashed stops renewing: after ``expires`` anyone may take it over. The
  taker first creates ``leasetakeover/<id of the expired lease>`` exclusively, so of many
  takers of one expired lease exactly one wins (a compare-and-swap built from the one
  atomic create every store has), then writes its own lease over the old one.
- A holder trusts its lease only until ``VALIDITY_MARGIN`` before the expiry it wrote,
  measured on its own monotonic clock from before the write: past that (a renewal kept
  failing, or the process was paused) :meth:`Lease.check` raises :class:`LeaseLost`, the
  writes stop, and it neither renews nor deletes a lease that may be someone else's now.
  The margin covers clock skew between replicas (expiry is wall-clock time) and one
  renewal's own latency.

Contracts: :func:`open_lease` raises SessionBusy (someone holds it) or a DriverError while
taking it; the body is cancelled and LeaseLost raised if the lease cannot be kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from ..drivers.base import (
    AlreadyExists,
    Driver,
    DriverError,
    FileWriter,
    Hasher,
    PathNotFound,
    Unavailable,
)
from . import paths

log = logging.getLogger("registry.storage")

# Seconds a lease lives without renewal: how long a crashed holder blocks its session.
# Clients retry a busy session's request, and docker starts a new session on failure.
LEASE_TTL = 30.0
# Seconds before the written expiry at which a holder stops trusting its lease: allowed
# clock skew between replicas (NTP keeps it far below) plus one renewal's latency.
VALIDITY_MARGIN = 10.0
RELEASE_TIMEOUT = 10.0  # s, the shielded delete of a lease when a request ends


class SessionBusy(Exception):
    """Another request (in any process) holds the session's lease."""


class LeaseLost(Unavailable):
    """The lease could not be kept (storage too slow to renew it, or this process was
    paused past its validity): the request stops writing. Answered as 503."""


class Lease:
    """A held lease. ``check()`` before every write; ``gone = True`` once the session
    (and the lease with it) has been removed, so release does not try again."""

    def __init__(
        self, driver: Driver, path: str, ttl: float, clock: Callable[[], float]
    ) -> None:
        self.driver = driver
        self.path = path
        self.token = uuid.uuid4().hex
        self.ttl = ttl
        self.clock = clock
        self.gone = False
        self._valid_until = -float("inf")  # trio.current_time() until which we trust it

    def _content(self) -> bytes:
        return json.dumps({"token": self.token, "expires": self.clock() + self.ttl}).encode()

    def _confirmed(self, written_from: float) -> None:
        self._valid_until = written_from + self.ttl - VALIDITY_MARGIN

    @property
    def valid(self) -> bool:
        return trio.current_time() < self._valid_until

    def check(self) -> None:
        """Raise LeaseLost unless this holder may still write."""
        if not self.valid:
            raise LeaseLost(f"upload lease {self.path} could not be kept")

    async def create(self) -> None:
        started = trio.current_time()
        await self.driver.create_exclusive(self.path, self._content())
        self._confirmed(started)

    async def overwrite(self) -> None:
        started = trio.current_time()
        await self.driver.put_content(self.path, self._content(), durable=False)
        self._confirmed(started)

    async def renew_forever(self) -> None:
        """Renew every ttl/3 while valid; raise LeaseLost once it is not."""
        while True:
            await trio.sleep(self.ttl / 3)
            self.check()  # never write over a lease that may have been taken over
            try:
                await self.overwrite()
            except DriverError as exc:  # try again at the next tick while still valid
                log.warning("could not renew upload lease %s: %s", self.path, exc)

    async def release(self) -> None:
        """Delete the lease if it is still ours (shielded, bounded, never raises)."""
        if self.gone or not self.valid:
            return
        with trio.move_on_after(RELEASE_TIMEOUT) as cs:
            cs.shield = True
            try:
                await self.driver.delete(self.path)
            except PathNotFound:
                pass
            except DriverError as exc:  # it expires by itself
                log.warning("could not release upload lease %s: %s", self.path, exc)
        self.gone = True


class LeasedWriter:
    """A FileWriter that writes only while ``lease`` is held (Lease.check before every
    write): a holder that lost its lease stops before appending another byte."""

    def __init__(self, w: FileWriter, lease: Lease) -> None:
        self._w = w
        self._lease = lease

    @property
    def size(self) -> int:
        return self._w.size

    async def write(
        self, data: bytes | bytearray | memoryview, hasher: Hasher | None = None
    ) -> None:
        self._lease.check()
        await self._w.write(data, hasher)

    async def commit(self) -> None:
        await self._w.commit()

    async def cancel(self) -> None:
        await self._w.cancel()


async def _acquire(lease: Lease, name: str, upload_id: str) -> None:
    """Take the lease: create it, or take over an expired one; SessionBusy otherwise."""
    for _ in range(2):  # a second try if the holder released it while we looked
        try:
            await lease.create()
            return
        except AlreadyExists:
            pass
        try:
            raw = await lease.driver.get_content(lease.path)
        except PathNotFound:
            continue
        try:
            expires = float(json.loads(raw)["expires"])
        except (ValueError, KeyError, TypeError):
            expires = 0.0  # unreadable: treat as expired (a valid holder rewrites it)
        if expires > lease.clock():
            raise SessionBusy(lease.path)
        expired_id = hashlib.sha256(raw).hexdigest()[:32]
        try:
            await lease.driver.create_exclusive(
                paths.upload_lease_takeover(name, upload_id, expired_id), lease.token.encode()
            )
        except AlreadyExists:
            raise SessionBusy(lease.path) from None
        log.info("upload %s: taking over an expired writer lease", upload_id)
        await lease.overwrite()
        return
    raise SessionBusy(lease.path)


@asynccontextmanager
async def open_lease(
    driver: Driver,
    name: str,
    upload_id: str,
    *,
    ttl: float = LEASE_TTL,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Lease]:
    """Hold the session's writer lease for the body (renewed in the background, released
    on exit). Raises SessionBusy if another request holds it. If it cannot be kept, the
    body is cancelled and LeaseLost raised; the body's own exception is raised unwrapped.
    """
    lease = Lease(driver, paths.upload_lease(name, upload_id), ttl, clock)
    await _acquire(lease, name, upload_id)
    body_error: BaseException | None = None
    try:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lease.renew_forever)
                try:
                    yield lease
                except BaseException as exc:  # noqa: BLE001 -- re-raised below, unwrapped
                    body_error = exc
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            lost = group.subgroup(LeaseLost)
            if lost is None:
                raise
            raise LeaseLost(f"upload lease {lease.path} could not be kept") from group
    finally:
        await lease.release()
    if body_error is not None:
        raise body_error
