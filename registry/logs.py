"""Log lines in the reference registry's formats, and the request each line belongs to.

``log.formatter: text`` writes what logrus's TextFormatter writes in distribution v3.0.0
(``time="<RFC 3339, ns>" level=info msg="..." key=value ...``: the three fixed keys first,
then the fields sorted by name, a value quoted Go-style when it holds anything but
``[A-Za-z0-9-._/@^+]``); ``json`` (and ``logstash``, which v3 configures as the same JSON
formatter) writes logrus's JSONFormatter: one flat object, keys sorted, ``time``, ``level``,
``msg`` beside the fields. Level names are logrus's (``warning``, not ``warn``).

Every line carries ``log.fields``, ``instance.id`` (one per process start, as v3's) and
``version``; a line logged while a request is handled also carries v3's request fields
(``http.request.id``, ``.method``, ``.uri``, ``.host``, ``.remoteaddr``, ``.useragent``,
``.contenttype``, ``.referer``, ``vars.name``/``reference``/``digest``/``uuid``, and
``auth.user.name`` once the user is known): :func:`begin_request` binds a
:class:`RequestLog` to the request's task (a context variable), and the formatter reads it
only when a line is written, so a request that logs nothing pays for one id and one
context-variable set. The access line (:func:`access`) is v3's ``response completed``
line with ``http.response.status``, ``.written``, ``.duration`` (Go's duration text) and
``.contenttype``, and for an error answer v3's ``response completed with error`` (one
per error in the body) with ``err.code``, ``err.message``, ``err.detail``.

Leaf module: imports nothing from the project but its version.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Mapping
from json import JSONEncoder
from typing import Any

from . import __version__

LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
# logrus's level names, which a pipeline reading registry:3 filters on.
LOGRUS_LEVELS = {
    logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
    logging.ERROR: "error", logging.CRITICAL: "fatal",
}
# logrus TextFormatter.needsQuoting: any other character and the value is quoted.
_BARE = re.compile(r"[A-Za-z0-9\-._/@^+]*\Z").match
_PRINTABLE = re.compile(r"[ -~]*\Z").match  # printable ASCII: quoting escapes only \ and "
# An incoming X-Request-Id we adopt (a proxy's id, so both logs join); anything else, and
# we make our own. The character set keeps a hostile id from forging fields in text lines.
_INCOMING_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=@/-]{0,127}\Z").match
MAX_FIELD_CHARS = 1024  # a request's URI or user agent in a line: bounded, lines stay lines
REQUEST_ID_HEADER = b"x-request-id"  # v3 sends none; the name proxies and tracers know

access_log = logging.getLogger("registry.access")


# --- request ids ------------------------------------------------------------------------

def _new_prefix() -> str:
    return str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-": the random part


_prefix = _new_prefix()
_counter = itertools.count()


def _after_fork() -> None:  # workers are forked: each needs its own prefix
    global _prefix, _counter
    _prefix, _counter = _new_prefix(), itertools.count()


os.register_at_fork(after_in_child=_after_fork)


def new_request_id() -> str:
    """A UUID-shaped id unique across processes: a random prefix per process and a
    counter (a uuid4 per request costs a getrandom call and more formatting)."""
    return f"{_prefix}{next(_counter) & 0xFFFFFFFFFFFF:012x}"


# --- the request a line belongs to --------------------------------------------------------

class RequestLog:
    """One request as the log sees it. ``req`` is the app's request (method, headers,
    params, user); ``scope`` the ASGI scope (raw query, peer address). ``error`` is set
    by the app when the answer is an error (a RegistryError: ``entries`` of code,
    message, detail). The fields are computed only when a line is written."""

    __slots__ = ("_token", "error", "id", "req", "scope")

    def __init__(self, rid: str, req: Any, scope: Mapping[str, Any]) -> None:
        self.id = rid
        self.req = req
        self.scope = scope
        self.error: Any = None
        self._token: contextvars.Token[RequestLog | None] | None = None

    def fields(self) -> dict[str, Any]:
        """v3's request fields (dcontext.GetRequestLogger, the mux vars, the user)."""
        req, scope = self.req, self.scope
        headers = req.headers
        qs = scope.get("query_string", b"")
        uri = req.path + ("?" + qs.decode("latin-1") if qs else "")
        f: dict[str, Any] = {
            "http.request.id": self.id,
            "http.request.method": req.method,
            "http.request.host": headers.get("host", "")[:MAX_FIELD_CHARS],
            "http.request.uri": uri[:MAX_FIELD_CHARS],
            "http.request.remoteaddr": remote_addr(headers, scope.get("client"))[:MAX_FIELD_CHARS],
            "http.request.useragent": headers.get("user-agent", "")[:MAX_FIELD_CHARS],
        }
        for header in ("content-type", "referer"):
            value = headers.get(header)
            if value:
                f["http.request." + header.replace("-", "")] = value[:MAX_FIELD_CHARS]
        for key, value in req.params.items():
            if key in ("name", "reference", "digest", "uuid"):
                f["vars." + key] = value[:MAX_FIELD_CHARS]
        if req.user:
            f["auth.user.name"] = req.user
        return f


_REQUEST: contextvars.ContextVar[RequestLog | None] = contextvars.ContextVar(
    "registry_request_log", default=None)


def begin_request(req: Any, scope: Mapping[str, Any]) -> RequestLog:
    """Bind a new :class:`RequestLog` to the current task (and the tasks it starts) until
    :func:`end_request`. The id is the client's ``X-Request-Id`` when it is a plain token
    (a proxy's, so the two logs join), else a new one."""
    incoming = req.headers.get("x-request-id")
    rid = incoming if incoming and _INCOMING_ID(incoming) else new_request_id()
    rl = RequestLog(rid, req, scope)
    rl._token = _REQUEST.set(rl)
    return rl


def end_request(rl: RequestLog) -> None:
    """Unbind ``rl`` (a server may run the next request of a connection in this task)."""
    if rl._token is not None:
        _REQUEST.reset(rl._token)
        rl._token = None


def current_request() -> RequestLog | None:
    return _REQUEST.get()


def remote_addr(headers: Mapping[str, str], client: Any) -> str:
    """v3's http.request.remoteaddr (requestutil.RemoteAddr): the first X-Forwarded-For
    address, else X-Real-Ip, else the peer as host:port."""
    forwarded = headers.get("x-forwarded-for")
    if forwarded:
        first = forwarded.split(",", 1)[0].strip()
        if _is_ip(first):
            return first
    real = headers.get("x-real-ip")
    if real and _is_ip(real):
        return real
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- the access line -----------------------------------------------------------------------

def access(rl: RequestLog, status: int, written: int, seconds: float, content_type: str | None) -> None:
    """Log v3's ``response completed`` line for ``rl`` (at INFO: v3 logs error answers at
    ERROR, we keep them at INFO so that ``log.level: warn`` silences the access log and a
    404 is not an alert). Costs nothing but a level check when INFO is off."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "http.response.status": status,
        "http.response.written": written,
        "http.response.duration": go_duration(seconds),
    }
    if content_type:
        fields["http.response.contenttype"] = content_type
    err = rl.error
    if err is None:
        access_log.info("response completed", extra={"fields": fields, "request": rl})
        return
    # v3 logs one line per error in the answer; err.code is errcode's Error() text.
    for code, message, detail in getattr(err, "entries", ()):
        one = dict(fields)
        one["err.code"] = code.wire_code.lower().replace("_", " ")
        one["err.message"] = message
        if detail is not None:
            one["err.detail"] = detail
        access_log.info("response completed with error", extra={"fields": one, "request": rl})


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` (what v3 logs as http.response.duration):
    ``850ns``, ``12.5µs``, ``5.770729ms``, ``1.5s``, ``2m3.000000001s``, ``1h0m0s``."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_frac(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_frac(ns, 6)}ms"
    secs, frac = divmod(ns, 1_000_000_000)
    text = f"{secs % 60}" + (f".{frac:09d}".rstrip("0") if frac else "") + "s"
    minutes = secs // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes >= 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


def _frac(value: int, digits: int) -> str:
    whole, frac = divmod(value, 10**digits)
    return f"{whole}.{frac:0{digits}d}".rstrip("0") if frac else str(whole)


# --- formatters ------------------------------------------------------------------------------

class _Clock:
    """RFC 3339 with nanoseconds as Go's RFC3339Nano (trailing zeros dropped), in UTC;
    the date and time part is formatted once per second (kept as one tuple: threads that
    log may race here, and each must see a second with its own text)."""

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def format(self, created: float) -> str:
        second = int(created)
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        us = int((created - second) * 1_000_000)
        return prefix + (f".{us:06d}".rstrip("0") if us else "") + "Z"


def _go_text(value: Any) -> str:
    """A value as Go's fmt.Sprint prints it, near enough for logs."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def _text_value(value: Any) -> str:
    """A value as logrus's TextFormatter writes it: bare, or quoted as Go's %q."""
    if value.__class__ is int:  # status, bytes: never quoted
        return str(value)
    text = value if value.__class__ is str else _go_text(value)
    if _BARE(text):
        return text
    if _PRINTABLE(text):  # the usual case (a host:port, a user agent): no escapes but two
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return json.dumps(text, ensure_ascii=False)  # control characters: escaped, one line


class LogrusFormatter(logging.Formatter):
    """logrus's TextFormatter (``json=False``) or JSONFormatter (``json=True``), with the
    static ``fields`` on every line and the current request's fields (see the module doc).
    Extra fields for one record come as ``extra={"fields": {...}}``, its request (else the
    current one) as ``extra={"request": RequestLog}``; a traceback becomes
    the ``error`` field (one line per record, always)."""

    def __init__(self, fields: Mapping[str, Any] | None = None, *, json: bool = False) -> None:
        super().__init__()
        static: dict[str, Any] = {"instance.id": str(uuid.uuid4()), "version": __version__}
        for key, value in (fields or {}).items():
            # logrus renames a field that clashes with its own keys (prefixFieldClashes).
            static[f"fields.{key}" if key in ("time", "level", "msg") else str(key)] = value
        self.static = static
        # Text: each static field is rendered once, "key=value", and sorted in per line.
        self._static_text = {k: f"{k}={_text_value(v)}" for k, v in static.items()}
        self._quoted: dict[str, str] = {}  # string value -> as written (see _render_into)
        self.json = json
        # One encoder, built once: json.dumps with options builds one per call.
        self._encode = JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                   default=str).encode
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        rl = record.__dict__.get("request") or _REQUEST.get()
        extra = record.__dict__.get("fields")
        stamp = self._clock.format(record.created)
        level = LOGRUS_LEVELS.get(record.levelno) or record.levelname.lower()
        msg = record.getMessage()
        if self.json:
            fields = dict(self.static)
            if rl is not None:
                fields.update(rl.fields())
            if extra:
                fields.update(extra)
            if record.exc_info:
                fields["error"] = self.formatException(record.exc_info)
            fields["time"], fields["level"], fields["msg"] = stamp, level, msg
            return self._encode(fields)
        rendered = dict(self._static_text)
        for more in (rl.fields() if rl is not None else None, extra):
            if more:
                _render_into(rendered, more, self._quoted)
        if record.exc_info:
            rendered["error"] = "error=" + _text_value(self.formatException(record.exc_info))
        head = f'time="{stamp}" level={level} msg={_text_value(msg)}'
        return head + " " + " ".join([rendered[k] for k in sorted(rendered)])


QUOTED_CACHE_ENTRIES = 4096  # then cleared: bounded memory, whatever clients send
# Longer values are rendered each time: with MAX_FIELD_CHARS values the cache could hold
# ~16 MiB of one client's distinct junk; values that repeat (hosts, names, digests, most
# user agents) are shorter than this.
QUOTED_CACHE_VALUE_CHARS = 256


def _render_into(rendered: dict[str, str], fields: Mapping[str, Any], cache: dict[str, str]) -> None:
    """``rendered[key] = "key=value"`` as logrus writes each field (_text_value, with the
    string results remembered in ``cache``: most values repeat (hosts, user agents, names),
    and this runs for every field of every access line)."""
    for key, value in fields.items():
        cls = value.__class__
        if cls is str and len(value) <= QUOTED_CACHE_VALUE_CHARS:
            text = cache.get(value)
            if text is None:
                if len(cache) >= QUOTED_CACHE_ENTRIES:
                    cache.clear()
                text = cache[value] = _text_value(value)
            rendered[key] = key + "=" + text
        elif cls is int:
            rendered[key] = key + "=" + str(value)
        else:
            rendered[key] = key + "=" + _text_value(value)


def setup(level: str = "info", formatter: str = "text", fields: Mapping[str, Any] | None = None) -> None:
    """Send every log record to stderr in ``formatter`` (text | json) at ``level`` and up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogrusFormatter(fields, json=formatter == "json"))
    # What no format here shows, the logging module need not collect for every record: the
    # caller's file and line (a walk up the stack), the thread and process names. The
    # access log writes a record per request, and these cost more than the rest of it.
    logging._srcfile = None  # type: ignore[attr-defined]  # the logging docs' "Optimization"
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    # hypercorn's own loggers: errors only; we write the access log ourselves.
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.access").disabled = True
    # httpx/httpcore log every S3 request at INFO; our S3 client logs what matters.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
