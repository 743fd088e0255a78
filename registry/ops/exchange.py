"""The exchange record: one request and its answer, as metrics and notifications see them.

The app (``http/app.py``) fills one :class:`Exchange` per request when operations observe
(metrics on, or a listener such as webhook notifications), from the request it decoded once:
the matched route's metric label and event kind, the path parameters, the authenticated
user, the status, the bytes each way. After the response it hands the record to the metrics
and to each listener. Nothing here knows routes by name: the route table
(``http/routes.py``) gives each route its label and its :class:`EventKind`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Methods the metrics label as themselves; anything else is "OTHER", so a client cannot
# grow the label set (and the metrics' memory) by inventing methods.
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
UNMATCHED_LABEL = "unknown"  # the metric label of a request no route (or method) matched


class EventKind(enum.Enum):
    """What a route's exchanges are about: the notification event kind of its route.

    Notifications turn exchanges of these kinds into the reference's events (which method
    and status make a push, pull, delete or mount is theirs to say); the metrics count
    upload sessions from the two upload kinds."""

    MANIFEST = enum.auto()  # a manifest by tag or digest: pull, push, delete
    BLOB = enum.auto()  # a blob in a repository: pull, delete
    UPLOAD_START = enum.auto()  # starts an upload session, or pushes or mounts in one request
    UPLOAD = enum.auto()  # an upload session: append, status, complete (push), cancel


UPLOAD_EVENTS = frozenset({EventKind.UPLOAD_START, EventKind.UPLOAD})


def metric_method(method: str) -> str:
    """``method`` as the metrics and events label it (one of METHODS, else OTHER)."""
    return method if method in METHODS else OTHER_METHOD


@dataclass
class Exchange:
    """One request and its answer, as seen on the wire. The header mappings are filled only
    for listeners (metrics alone leave them empty). ``query`` is the decoded query."""

    method: str  # metric_method() of the request's method
    label: str  # the matched route's metric label, or UNMATCHED_LABEL
    params: Mapping[str, str]  # the path parameters (name, reference, digest, uuid)
    path: str
    client: str
    request_headers: Mapping[str, str]  # lower-case names, repeated headers joined by ", "
    event: EventKind | None = None  # the matched route's event kind
    query: Mapping[str, list[str]] = field(default_factory=dict)
    status: int = 0  # 0: no response started (cancelled): nothing happened on the wire
    response_headers: Mapping[str, str] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    user: str | None = None

    def query_param(self, key: str) -> str | None:
        values = self.query.get(key)
        return values[-1] if values else None


Listener = Callable[[Exchange], None]
