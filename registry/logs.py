"""Logging setup from ``log.level`` / ``log.formatter`` (text or json), one line per record."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


class JSONFormatter(logging.Formatter):
    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(self.fields)
        http = getattr(record, "http", None)
        if http:
            out["http"] = http
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info", formatter: str = "text", fields: Mapping[str, Any] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if formatter == "json":
        handler.setFormatter(JSONFormatter(fields))
    else:
        extra = " ".join(f"{k}={v}" for k, v in (fields or {}).items())
        fmt = "%(asctime)s %(levelname)s %(name)s " + (extra + " " if extra else "") + "%(message)s"
        handler.setFormatter(logging.Formatter(fmt))
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
