"""What the UI shows of a stored manifest and an image config: pure interpretation of bytes
already verified against their digest (no I/O here), and the JSON time format.

Stored manifests were validated when pushed, but bytes written by another registry may be
anything: every reader here tolerates missing or mistyped fields (they become None, 0 or
empty) and never raises for content. Strings are returned verbatim (escaping is the page's
job; JSON encoding keeps them safe on the wire).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from .. import safejson
from ..digest import Digest, canonical
from ..storage.manifests import INDEX_TYPES, sniff_media_type

MAX_HISTORY = 500  # config history entries shown; a real image has tens


@dataclass(frozen=True, slots=True)
class Desc:
    """A descriptor: digest (canonical string), size, media type, annotations, platform."""

    digest: str
    size: int
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None
    artifact_type: str | None = None

    def layer_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "media_type": self.media_type,
                "annotations": self.annotations}


@dataclass(frozen=True)
class ManifestInfo:
    """One manifest, read: its own size and type, what it references, its subject."""

    digest: str
    size: int
    media_type: str
    artifact_type: str | None
    annotations: dict[str, str]
    config: Desc | None
    layers: tuple[Desc, ...]
    children: tuple[Desc, ...]  # index entries
    subject: Desc | None

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _size(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _annotations(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        return {}
    return {str(k): x if isinstance(x, str) else str(x) for k, x in v.items()}


def _desc(obj: Any) -> Desc | None:
    if not isinstance(obj, dict):
        return None
    d = canonical(obj.get("digest"))
    if d is None:
        return None
    platform = obj.get("platform")
    return Desc(d, _size(obj.get("size")), _str(obj.get("mediaType")) or "",
                _annotations(obj.get("annotations")),
                platform if isinstance(platform, dict) else None,
                _str(obj.get("artifactType")))


def _descs(v: Any) -> tuple[Desc, ...]:
    if not isinstance(v, list):
        return ()
    return tuple(d for d in map(_desc, v) if d is not None)


def read_manifest(d: Digest, body: bytes) -> ManifestInfo:
    """The manifest ``d`` whose (verified) bytes are ``body``."""
    media_type = sniff_media_type(body)
    try:
        doc = safejson.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    config = _desc(doc.get("config"))
    artifact_type = _str(doc.get("artifactType"))
    # OCI 1.1: without artifactType, an artifact's type is its config's media type; an
    # image's config type is not an artifact type.
    if (artifact_type is None and config is not None and media_type not in INDEX_TYPES
            and config.media_type not in _IMAGE_CONFIG_TYPES):
        artifact_type = config.media_type or None
    return ManifestInfo(
        digest=str(d), size=len(body), media_type=media_type, artifact_type=artifact_type,
        annotations=_annotations(doc.get("annotations")), config=config,
        layers=_descs(doc.get("layers")), children=_descs(doc.get("manifests")),
        subject=_desc(doc.get("subject")),
    )


_IMAGE_CONFIG_TYPES = frozenset({
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
})


@dataclass(frozen=True)
class ConfigInfo:
    """What an image config says: creation time (RFC 3339 UTC), platform, history."""

    created: str | None
    os: str | None
    architecture: str | None
    history: tuple[dict[str, Any], ...]


NO_CONFIG = ConfigInfo(None, None, None, ())


def read_config(body: bytes) -> ConfigInfo:
    try:
        doc = safejson.loads(body)
    except ValueError:
        return NO_CONFIG
    if not isinstance(doc, dict):
        return NO_CONFIG
    history = []
    raw = doc.get("history")
    for h in raw[:MAX_HISTORY] if isinstance(raw, list) else ():
        if isinstance(h, dict):
            history.append({
                "created": rfc3339(h.get("created")),
                "created_by": _str(h.get("created_by")),
                "empty_layer": h.get("empty_layer") is True,
                "comment": _str(h.get("comment")),
            })
    return ConfigInfo(rfc3339(doc.get("created")), _str(doc.get("os")),
                      _str(doc.get("architecture")), tuple(history))


_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def rfc3339(value: Any) -> str | None:
    """A time (epoch seconds, or an RFC 3339 string as Go writes it, nanoseconds and
    offsets included) as RFC 3339 UTC ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``; None if unreadable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        t = dt.datetime.fromtimestamp(value, dt.UTC)
    elif isinstance(value, str) and 0 < len(value) <= 64:
        text = _FRACTION.sub(lambda m: m.group(1), value.strip(), count=1)
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        t = t.astimezone(dt.UTC)
    else:
        return None
    if t.year < 1971:  # Go's zero time and reproducible builds' epoch 0 say "unknown"
        return None
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if t.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return t.strftime(fmt)
