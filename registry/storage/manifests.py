"""Manifest parsing and validation: pure, no I/O (SPEC.md Push 17-21).

``parse_manifest`` checks a pushed manifest's bytes against its Content-Type and returns
what storage needs: the media type to serve it with, the blobs and child manifests it
references (which must exist in the repository), and its ``subject``/``artifactType`` for
the referrers API.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .. import safejson
from ..digest import Digest, DigestError, canonical
from ..errors import ErrorCode, RegistryError
from .manifest_urls import NO_URL_LISTS, URLRules

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SCHEMA1_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # SPEC Push 20, the reference's limit too
# A refused URL is echoed in the error detail cut to this many characters: enough to see
# which one it is, while a 4 MiB manifest of long URLs cannot make a huge error body.
MAX_URL_IN_DETAIL = 512

DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


class URLRule(enum.Enum):
    """What a reference's ``urls`` mean (a media type not in URL_RULES: urls are ignored and
    the blob must exist)."""

    FOREIGN = "foreign"  # urls required and checked; the blob is not looked up
    NONDISTRIBUTABLE = "nondistributable"  # with urls: checked, not looked up; else must exist
    DISTRIBUTABLE = "distributable"  # urls (if any) checked; the blob must exist regardless


# manifest type -> reference media type -> rule, as the reference's schema2 and OCI manifest
# handlers switch on them (config and layers alike). Ours: a docker foreign layer inside an
# OCI manifest is read as OCI non-distributable (the reference requires its blob; we never
# did, and tests/test_protocol_tables.py holds us to that). Zstd layer types are in neither
# of the reference's lists, so their urls are ignored there and here.
URL_RULES: dict[str, dict[str, URLRule]] = {
    DOCKER_MANIFEST: {DOCKER_FOREIGN_LAYER: URLRule.FOREIGN},
    OCI_MANIFEST: {
        OCI_LAYER: URLRule.DISTRIBUTABLE,
        OCI_LAYER_GZIP: URLRule.DISTRIBUTABLE,
        OCI_NONDISTRIBUTABLE: URLRule.NONDISTRIBUTABLE,
        OCI_NONDISTRIBUTABLE_GZIP: URLRule.NONDISTRIBUTABLE,
        DOCKER_FOREIGN_LAYER: URLRule.NONDISTRIBUTABLE,
    },
}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedManifest:
    media_type: str
    blobs: tuple[Descriptor, ...]  # config + layers: must be linked blobs in the repo
    manifests: tuple[Descriptor, ...]  # index children: must be manifests in the repo
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] | None = field(default=None)

    @property
    def references(self) -> tuple[Descriptor, ...]:
        return self.blobs + self.manifests


def _invalid(message: str, detail: Any = None) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, message, detail)


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise _invalid(f"{where}: descriptor must be an object")
    mt = obj.get("mediaType")
    if not isinstance(mt, str) or not mt:
        raise _invalid(f"{where}: mediaType must be a non-empty string")
    raw = obj.get("digest")
    if not isinstance(raw, str):
        raise _invalid(f"{where}: digest must be a string")
    try:
        d = Digest.parse(raw)
    except DigestError as e:
        raise RegistryError(ErrorCode.DIGEST_INVALID, f"{where}: {e}") from None
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}: size must be a non-negative integer")
    at = obj.get("artifactType")
    if at is not None and not isinstance(at, str):
        raise _invalid(f"{where}: artifactType must be a string")
    ann = obj.get("annotations")
    if ann is not None and (
        not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values())
    ):
        raise _invalid(f"{where}: annotations must map strings to strings")
    platform = obj.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise _invalid(f"{where}: platform must be an object")
    urls = obj.get("urls")
    if urls is not None and (
        not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)
    ):
        raise _invalid(f"{where}: urls must be a list of strings")
    return Descriptor(mt, d, size, at, ann, platform, tuple(urls or ()))


def url_problem(manifest_type: str, desc: Descriptor, rules: URLRules) -> tuple[str, str] | None:
    """The first refused URL of `desc` in a manifest of `manifest_type` and why ("" for the
    URL when a foreign layer has none), or None. The reference stops at the first one."""
    rule = URL_RULES.get(manifest_type, {}).get(desc.media_type)
    if rule is None:
        return None
    if rule is URLRule.FOREIGN and not desc.urls:
        return "", "a foreign layer must carry urls"
    for url in desc.urls:
        reason = rules.problem(url)
        if reason is not None:
            return url, reason
    return None


def must_exist(manifest_type: str, desc: Descriptor) -> bool:
    """Whether the blob of `desc` (URLs accepted) must be linked in the repository."""
    rule = URL_RULES.get(manifest_type, {}).get(desc.media_type)
    if rule is URLRule.FOREIGN:
        return False
    return rule is not URLRule.NONDISTRIBUTABLE or not desc.urls


def _check_urls(manifest_type: str, refs: tuple[Descriptor, ...], rules: URLRules) -> None:
    """Raise one MANIFEST_INVALID per reference with a refused URL, each followed by the
    MANIFEST_BLOB_UNKNOWN the reference adds for it. (The reference answers 500 UNKNOWN for
    a refused URL; bad input is a 400 here, with the URL in the detail.)"""
    err: RegistryError | None = None
    for desc in refs:
        found = url_problem(manifest_type, desc, rules)
        if found is None:
            continue
        url, reason = found
        message = "invalid URL on layer" if url else "missing URL on layer"
        detail: dict[str, str] = {"digest": str(desc.digest), "reason": reason}
        if url:
            detail["url"] = url[:MAX_URL_IN_DETAIL]
        if err is None:
            err = RegistryError(ErrorCode.MANIFEST_INVALID, message, detail)
        else:
            err.add(ErrorCode.MANIFEST_INVALID, message, detail)
        err.add(ErrorCode.MANIFEST_BLOB_UNKNOWN, detail={"digest": str(desc.digest)})
    if err is not None:
        raise err


def parse_manifest(
    content_type: str | None, body: bytes, urls: URLRules = NO_URL_LISTS
) -> ParsedManifest:
    """Validate ``body`` pushed with ``content_type``; layer URLs against `urls`
    (manifest_urls.py; the default has no allow/deny lists).

    Raises RegistryError: MANIFEST_INVALID for unsupported types (incl. schema1), invalid
    JSON, a body ``mediaType`` contradicting the Content-Type, malformed descriptors, or
    refused layer URLs (each followed by MANIFEST_BLOB_UNKNOWN for its digest, as the
    reference lists them); DIGEST_INVALID for a malformed digest inside it.
    """
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        doc = safejson.loads(body)
    except safejson.JSONLimitError as e:
        raise _invalid(f"manifest {e}") from None
    except ValueError:  # includes UnicodeDecodeError
        raise _invalid("manifest is not valid JSON") from None
    if not isinstance(doc, dict):
        raise _invalid("manifest must be a JSON object")
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise _invalid("mediaType must be a string")
    if ct in ("", "application/json", "application/octet-stream"):
        # Some clients omit Content-Type; fall back to what the body says it is (as the
        # reference does), or to OCI by shape.
        if body_type:
            ct = body_type
        elif "manifests" in doc:
            ct = OCI_INDEX
        else:
            ct = OCI_MANIFEST
    if ct in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        raise _invalid("schema1 manifests are not supported; push with a current client")
    if ct not in MANIFEST_TYPES:
        raise _invalid(f"unsupported manifest media type: {ct[:100]}")
    if body_type and body_type != ct:
        raise _invalid(f"manifest mediaType {body_type[:100]} does not match Content-Type {ct}")
    if doc.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    if ct in (DOCKER_MANIFEST,) and body_type != ct:
        raise _invalid("docker manifests must carry their mediaType")

    subject = None
    if doc.get("subject") is not None:
        subject = _descriptor(doc["subject"], "subject")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    annotations = doc.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise _invalid("annotations must be an object")

    if ct in INDEX_TYPES:
        children = doc.get("manifests")
        if not isinstance(children, list):
            raise _invalid("manifests must be a list")
        descs = tuple(_descriptor(c, f"manifests[{i}]") for i, c in enumerate(children))
        return ParsedManifest(ct, (), descs, subject, artifact_type, annotations)

    config = _descriptor(doc.get("config"), "config")
    layers = doc.get("layers")
    if layers is None and ct == OCI_MANIFEST:
        layers = []
    if not isinstance(layers, list):
        raise _invalid("layers must be a list")
    layer_descs = tuple(_descriptor(lyr, f"layers[{i}]") for i, lyr in enumerate(layers))
    effective_type: str | None
    if artifact_type is None and ct == OCI_MANIFEST and config.media_type != OCI_EMPTY:
        effective_type = config.media_type
    else:
        effective_type = artifact_type
    # The reference checks the config like the layers (References() holds both); layers
    # fetched from their URLs are not stored here, so they need not exist.
    refs = (config, *layer_descs)
    _check_urls(ct, refs, urls)
    blobs = tuple(d for d in refs if must_exist(ct, d))
    return ParsedManifest(ct, blobs, (), subject, effective_type, annotations)


def sniff_media_type(body: bytes) -> str:
    """The media type of stored manifest bytes (for serving), without validating."""
    try:
        doc = safejson.loads(body, max_depth=None)  # only top-level keys are read
    except ValueError:
        return OCI_MANIFEST
    if not isinstance(doc, dict):
        return OCI_MANIFEST
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if doc.get("schemaVersion") == 1:
        return "application/vnd.docker.distribution.manifest.v1+prettyjws" if doc.get(
            "signatures"
        ) else "application/vnd.docker.distribution.manifest.v1+json"
    if "manifests" in doc:
        return OCI_INDEX
    return OCI_MANIFEST


# --- stored manifests: what they reference, what the referrers API reports ---------------


@dataclass(frozen=True, slots=True)
class Refs:
    """What one manifest's bytes reference. ``ok`` is False for bytes that are not a JSON
    object (then nothing is referenced; the manifest blob itself is still kept)."""

    blobs: tuple[str, ...] = ()  # config and layers (schema1: fsLayers)
    children: tuple[str, ...] = ()  # index / manifest list entries
    subject: str | None = None
    ok: bool = True

    @property
    def all(self) -> tuple[str, ...]:
        return self.blobs + self.children


def _digest_of(obj: Any, key: str = "digest") -> str | None:
    return canonical(obj.get(key)) if isinstance(obj, dict) else None


def parse_references(body: bytes) -> Refs:
    """The references of stored manifest bytes, without validating them (any stored
    manifest, including schema1 written by the reference, must be markable)."""
    try:
        doc = safejson.loads(body, max_depth=None)  # only top-level keys are read
    except ValueError:
        return Refs(ok=False)
    if not isinstance(doc, dict):
        return Refs(ok=False)
    blobs: list[str] = []
    children: list[str] = []
    entries = doc.get("manifests")
    if isinstance(entries, list):
        children = [d for d in map(_digest_of, entries) if d is not None]
    cfg = _digest_of(doc.get("config"))
    if cfg is not None:
        blobs.append(cfg)
    layers = doc.get("layers")
    if isinstance(layers, list):
        blobs.extend(d for d in map(_digest_of, layers) if d is not None)
    fs_layers = doc.get("fsLayers")  # schema1: the reference marks these too
    if isinstance(fs_layers, list):
        blobs.extend(d for d in (_digest_of(x, "blobSum") for x in fs_layers) if d is not None)
    return Refs(tuple(blobs), tuple(children), _digest_of(doc.get("subject")))


@dataclass(frozen=True)
class ManifestSummary:
    """What the referrers API reports about a manifest (cached by digest: immutable)."""

    media_type: str
    size: int
    subject: Digest | None
    artifact_type: str | None
    annotations: dict[str, str] | None


def summarize(body: bytes) -> ManifestSummary:
    media_type = sniff_media_type(body)
    subject = artifact_type = annotations = None
    try:
        doc = safejson.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        sub = doc.get("subject")
        if isinstance(sub, dict) and isinstance(sub.get("digest"), str):
            try:
                subject = Digest.parse(sub["digest"])
            except ValueError:
                subject = None
        at = doc.get("artifactType")
        if isinstance(at, str):
            artifact_type = at
        elif media_type not in INDEX_TYPES:
            cfg = doc.get("config")
            # OCI 1.1: without artifactType, a referrer's type is its config's mediaType.
            if isinstance(cfg, dict) and isinstance(cfg.get("mediaType"), str):
                artifact_type = cfg["mediaType"]
        ann = doc.get("annotations")
        if isinstance(ann, dict):
            annotations = {str(k): str(v) for k, v in ann.items()}
    return ManifestSummary(media_type, len(body), subject, artifact_type, annotations)
