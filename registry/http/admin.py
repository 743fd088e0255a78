"""``/admin/gc``: start an online garbage collection, or see how the last one went.

- ``POST /admin/gc`` -> 202 ``{"status": "started"}`` once the server's collector
  (``storage.gc_service.OnlineGC``, owned by the lifespan nursery) holds the storage lock
  and runs; 409 ``{"status": "running" | "busy", "holder": {"host", "pid", "expires"}}``
  when this process is collecting already, or any live process of any replica holds the
  lock (a dead holder on this host is taken over, so that answers 202); 503
  ``{"status": "failed", "reason"}`` when storage failed before the run could start.
- ``GET /admin/gc`` -> 200 with this process's collector status and last run's summary,
  and from storage (so any worker or replica answers alike) when a collection last
  finished and who holds the lock.

The route is in the table like every other one, so the app's ``authenticate`` hook sees it
(its access action is ADMIN) when auth is on, and read-only mode refuses the POST.
"""

from __future__ import annotations

from ..errors import ErrorCode, RegistryError
from ..storage.gc_service import OnlineGC
from .request import Request, Services
from .responses import Response, json_response


def _collector(svc: Services) -> OnlineGC:
    if svc.gc is None:
        raise RegistryError(
            ErrorCode.UNSUPPORTED, "garbage collection is not available", status=404
        )
    return svc.gc


async def start_gc(svc: Services, req: Request) -> Response:
    service = _collector(svc)
    refused = await service.start_now()
    if refused is None:
        return json_response(202, {"status": "started"})
    code = 503 if refused["status"] == "failed" else 409
    return json_response(code, {**service.status(), **refused})


async def gc_status(svc: Services, req: Request) -> Response:
    return json_response(200, await _collector(svc).describe())
