"""The UI's JSON API, reads (``GET /ui/api/v1/...``; API.md "JSON API").

Every answer is filtered by pull access (``access.py``): a repository the caller may not
pull is left out of lists and its URLs answer 404 NAME_UNKNOWN. Times are RFC 3339 UTC,
sizes integers in bytes. Names, tags and annotations are returned verbatim as JSON strings.
Errors are the OCI envelope (RegistryError).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import trio

from ..digest import Digest
from ..errors import ErrorCode, RegistryError
from ..http.request import Request, Services
from ..http.responses import Response, json_response
from ..storage.inventory import TagHead, tag_heads
from .access import proxied
from .headers import NO_STORE
from .model import ManifestInfo, rfc3339
from .service import UIService

DEFAULT_PAGE = 100  # repositories per page unless ?n= says otherwise
MAX_PAGE = 1000  # the largest ?n= (API.md)
MAX_N_DIGITS = 9  # digits of ?n= converted; a longer n (not all zeros) is MAX_PAGE
MAX_QUERY = 255  # a filter longer than any repository name matches nothing anyway
TAG_CONCURRENCY = 16  # tags of one repository read at once


def answer(obj: Any, status: int = 200) -> Response:
    return json_response(status, obj, [(b"cache-control", NO_STORE)])


async def info(svc: Services, req: Request) -> Response:
    ui: UIService = svc.ui
    ui.index.want_totals()  # in the background: this answer has the last totals
    totals = ui.index.totals
    gc = ui.gc
    can_gc = gc is not None and await ui.access.can_gc(req)
    return answer({
        "version": ui.version,
        "storage": {
            "driver": ui.driver_name,
            "bytes": totals.bytes,
            "blobs": totals.blobs,
            "computed_at": rfc3339(totals.computed_at),
            "computing": ui.index.computing,  # addition: poll until false (API.md)
        },
        "delete_enabled": ui.delete_enabled,
        "uploads_in_progress": totals.uploads,
        "gc": {
            "online": gc is not None and gc.scheduled,
            "running": gc is not None and gc.running,
            "last_runs": [_gc_run(r) for r in (reversed(gc.history) if gc is not None else ())],
        },
        "user": {
            "name": req.user,
            # Delete on every repository; each repository's answer has its own can_delete.
            "can_delete": ui.delete_enabled and can_gc,
            "can_gc": can_gc,
        },
        "auth": ui.access.scheme,
    })


def _gc_run(run: dict[str, Any]) -> dict[str, Any]:
    error = run.get("error")
    return {
        "started": rfc3339(run.get("started")),
        "finished": rfc3339(run.get("finished")),
        "blobs_deleted": int(run.get("blobs_deleted") or 0),
        "bytes_freed": int(run.get("bytes_freed") or 0),
        "manifests_deleted": int(run.get("manifests_deleted") or 0),
        "error": str(error) if error is not None else None,
    }


def page_size(req: Request) -> int:
    raw = req.q("n")
    if raw is None or raw == "":
        return DEFAULT_PAGE
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses
    digits = raw.lstrip("0")
    if not (raw.isascii() and raw.isdigit()) or not digits:
        raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, detail={"n": raw[:20]})
    # int() refuses more than 4300 digits; any n that long is above MAX_PAGE anyway
    return MAX_PAGE if len(digits) > MAX_N_DIGITS else min(int(digits), MAX_PAGE)


async def repositories(svc: Services, req: Request) -> Response:
    """One page of the catalog, filtered by ``q`` (substring) and pull access."""
    ui: UIService = svc.ui
    n = page_size(req)
    q = (req.q("q") or "").strip().lower()[:MAX_QUERY + 1]
    last = req.q("last") or ""
    names = await ui.index.names()
    page: list[str] = []
    more = False
    # Names are sorted: start after ``last`` by bisection, then scan until a page is full.
    for name in names[bisect.bisect_right(names, last) if last else 0 :]:
        if q and q not in name:
            continue
        if not await ui.access.can_pull(req, name):
            continue
        if len(page) == n:
            more = True
            break
        page.append(name)
    rows = await ui.index.summaries(page)
    return answer({
        "repositories": [
            {"name": s.name, "tags": s.tags, "last_push": rfc3339(s.last_push), "size": s.size}
            for s in rows
        ],
        "next": page[-1] if more else None,
    })


@dataclass
class Tree:
    """A tagged manifest and what it holds: blob sizes by digest (itself, configs, layers,
    and its children's for an index) and the layer digests alone."""

    m: ManifestInfo
    sizes: dict[str, int] = field(default_factory=dict)
    layers: set[str] = field(default_factory=set)
    children: set[str] = field(default_factory=set)


async def _tree(ui: UIService, name: str, d: Digest) -> Tree | None:
    m = await ui.index.manifest(name, d)
    if m is None:
        return None
    t = Tree(m)
    await ui.index.collect_sizes(name, d, t.sizes)
    t.layers.update(x.digest for x in m.layers)
    for child in m.children:
        t.children.add(child.digest)
        try:
            cm = await ui.index.manifest(name, Digest.parse(child.digest))
        except ValueError:
            continue
        if cm is not None:
            t.layers.update(x.digest for x in cm.layers)
    return t


async def _trees(ui: UIService, name: str, heads: list[TagHead]) -> dict[str, Tree]:
    """Digest -> tree of every digest the tags name (each read once)."""
    out: dict[str, Tree] = {}
    limiter = trio.CapacityLimiter(TAG_CONCURRENCY)

    async def one(d: Digest) -> None:
        async with limiter:
            t = await _tree(ui, name, d)
        if t is not None:
            out[str(d)] = t

    async with trio.open_nursery() as nursery:
        for d in dict.fromkeys(h.digest for h in heads if h.digest is not None):
            assert d is not None
            nursery.start_soon(one, d)
    return out


async def _heads(ui: UIService, req: Request, name: str) -> list[TagHead]:
    """The tags of a repository the caller may pull; 404 NAME_UNKNOWN otherwise."""
    await ui.access.pullable(req, name)
    heads = await tag_heads(ui.storage.driver, name)
    if not heads:
        await ui.storage.tags.list(name)  # NAME_UNKNOWN when there is no such repository
    return heads


def _platforms(m: ManifestInfo) -> list[dict[str, Any]]:
    out = []
    for c in m.children:
        p = c.platform or {}
        out.append({
            "os": p.get("os") if isinstance(p.get("os"), str) else None,
            "architecture": p.get("architecture") if isinstance(p.get("architecture"), str)
            else None,
            "variant": p.get("variant") if isinstance(p.get("variant"), str) else None,
            "digest": c.digest,
        })
    return out


async def repository(svc: Services, req: Request) -> Response:
    ui: UIService = svc.ui
    name = req.params["name"]
    heads = await _heads(ui, req, name)
    trees = await _trees(ui, name, heads)
    layer_users: dict[str, int] = {}  # layer digest -> how many tags use it
    tagged = [(h, trees.get(str(h.digest))) for h in heads]
    for _, t in tagged:
        for layer in t.layers if t is not None else ():
            layer_users[layer] = layer_users.get(layer, 0) + 1
    rows = []
    for h, t in tagged:
        if t is None:
            continue  # a tag whose manifest is gone: nothing to show or pull
        m = t.m
        config = await ui.index.config(name, m)
        rows.append({
            "tag": h.tag,
            "digest": m.digest,
            "media_type": m.media_type,
            "artifact_type": m.artifact_type,
            "size": sum(t.sizes.values()),
            "shared_size": sum(t.sizes.get(x, 0) for x in t.layers if layer_users[x] > 1),
            "created": config.created,
            "platforms": _platforms(m) if m.is_index else [],
            "pushed": rfc3339(h.pushed),
        })
    return answer({
        "name": name,
        "can_delete": ui.delete_enabled and not proxied(svc, name)
        and await ui.access.can_delete(req, name),
        "tags": rows,
    })


async def manifest(svc: Services, req: Request) -> Response:
    ui: UIService = svc.ui
    name = req.params["name"]
    await ui.access.pullable(req, name)
    raw = req.params["reference"]
    try:
        d = Digest.parse(raw)
    except ValueError:
        raise RegistryError(ErrorCode.DIGEST_INVALID, detail={"digest": raw[:100]}) from None
    m = await ui.index.manifest(name, d)
    if m is None:
        await ui.storage.tags.list(name)  # NAME_UNKNOWN before MANIFEST_UNKNOWN
        raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"digest": str(d)})
    config = await ui.index.config(name, m)
    heads = await tag_heads(ui.storage.driver, name)
    tags = [h.tag for h in heads if h.digest == d]
    referrers = await ui.storage.manifests.referrers(name, d)
    # What becomes unreferenced with it: children no other tag's manifest holds.
    others = await _trees(ui, name, [h for h in heads if h.digest != d])
    still_held = set(others) | {c for t in others.values() for c in t.children}
    return answer({
        "digest": m.digest,
        "media_type": m.media_type,
        "artifact_type": m.artifact_type,
        "size": m.size,
        "annotations": m.annotations,
        "tags": tags,
        "subject": {"digest": m.subject.digest, "media_type": m.subject.media_type}
        if m.subject is not None else None,
        "config": {"digest": m.config.digest, "size": m.config.size,
                   "media_type": m.config.media_type} if m.config is not None else None,
        "layers": [x.layer_json() for x in m.layers],
        "manifests": [
            {"digest": c.digest, "size": c.size, "media_type": c.media_type,
             "platform": c.platform, "annotations": c.annotations}
            for c in m.children
        ],
        "created": config.created,
        "os": config.os,
        "architecture": config.architecture,
        "history": list(config.history),
        "referrers": [
            {"digest": r["digest"], "artifact_type": r.get("artifactType"),
             "media_type": r["mediaType"], "size": r["size"],
             "annotations": r.get("annotations") or {}}
            for r in referrers
        ],
        "delete_preview": {
            "tags": tags,
            "referrers": [r["digest"] for r in referrers],
            "children": [c.digest for c in m.children if c.digest not in still_held],
        },
    })
