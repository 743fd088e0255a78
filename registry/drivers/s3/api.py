"""The S3 operations the driver uses, as typed calls over :class:`.client.S3Client`.

XML in and out is built and parsed here with xml.etree; keys are full bucket keys (the
driver adds ``rootdirectory``). Errors are the typed classes of :mod:`.errors`.
Only headers R2 accepts are sent by default: no checksum headers, and ACL/SSE headers only
when ``storage.s3.objectacl``/``encrypt`` ask for them (``S3Params.write_headers``).
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

from registry.drivers.s3 import errors, sigv4
from registry.drivers.s3.client import OCTET_STREAM, S3Client
from registry.drivers.s3.errors import child_text, children, parse_xml

MAX_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
META_PREFIX = "x-amz-meta-"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float
    etag: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]
    next_token: str | None


@dataclass(frozen=True)
class UploadInfo:
    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True)
class PartInfo:
    number: int
    etag: str
    size: int


def _iso_time(text: str) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text).timestamp()


def _http_time(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _xml_bytes(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


class S3Api:
    """One bucket's operations. ``write_headers`` go on every call that creates an object
    (PutObject, CreateMultipartUpload, CopyObject): storage class, SSE, ACL."""

    def __init__(
        self, client: S3Client, write_headers: Mapping[str, str] | None = None
    ) -> None:
        self.client = client
        self.write_headers = dict(
            {"x-amz-storage-class": "STANDARD"} if write_headers is None else write_headers
        )

    def _class_header(self) -> dict[str, str]:
        return self.write_headers

    def _copy_source(self, key: str) -> str:
        return sigv4.uri_encode(f"/{self.client.endpoint.bucket}/{key}", encode_slash=False)

    # -- bucket ------------------------------------------------------------------------------

    async def head_bucket(self) -> None:
        """Raises S3Unavailable (NoSuchBucket, AccessDenied, ...) or Unavailable."""
        try:
            await self.client.request("HEAD", None)
        except errors.NoSuchKey as exc:  # a bodyless 404 on the bucket itself
            raise errors.make_error(
                404, "NoSuchBucket", "bucket does not exist", resource=self.client.endpoint.bucket
            ) from exc

    async def list_objects(
        self,
        prefix: str,
        *,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        """One page of ListObjectsV2."""
        query = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(max_keys))]
        if delimiter:
            query.append(("delimiter", delimiter))
        if token:
            query.append(("continuation-token", token))
        response = await self.client.request("GET", None, query=query)
        root = parse_xml(response.body)
        objects = [
            ObjectInfo(
                key=child_text(item, "Key"),
                size=int(child_text(item, "Size", "0")),
                mtime=_iso_time(child_text(item, "LastModified")),
                etag=child_text(item, "ETag"),
            )
            for item in children(root, "Contents")
        ]
        prefixes = [child_text(item, "Prefix") for item in children(root, "CommonPrefixes")]
        truncated = child_text(root, "IsTruncated").lower() == "true"
        next_token = child_text(root, "NextContinuationToken") or None
        return ListPage(objects, prefixes, next_token if truncated else None)

    # -- objects -----------------------------------------------------------------------------

    async def head_object(self, key: str) -> ObjectInfo:
        """Raises NoSuchKey."""
        response = await self.client.request("HEAD", key)
        h = response.headers
        metadata = {
            name[len(META_PREFIX) :]: value
            for name, value in h.items()
            if name.lower().startswith(META_PREFIX)
        }
        return ObjectInfo(
            key=key,
            size=int(h.get("content-length", "0")),
            mtime=_http_time(h.get("last-modified")),
            etag=h.get("etag", ""),
            metadata=metadata,
        )

    async def get_object(self, key: str) -> bytes:
        """The whole object (small objects only). Raises NoSuchKey."""
        return (await self.client.request("GET", key)).body

    async def put_object(
        self,
        key: str,
        body: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
    ) -> str:
        """PutObject; returns the ETag. Idempotent (same key, same bytes).

        ``if_absent``: a conditional PUT (``If-None-Match: *``, supported by S3, R2 and
        moto) that raises PreconditionFailed (412) when the key exists, or an S3Error
        with status 409 (ConditionalRequestConflict) when another conditional write to
        the key is in progress."""
        headers = {"content-type": OCTET_STREAM, **self._class_header()}
        if if_absent:
            headers["if-none-match"] = "*"
        for name, value in (metadata or {}).items():
            headers[META_PREFIX + name] = value
        response = await self.client.request("PUT", key, headers=headers, body=body)
        return response.headers.get("etag", "")

    async def copy_object(self, src: str, dst: str) -> None:
        """Server-side CopyObject (up to 5 GiB). Raises NoSuchKey for a missing src."""
        headers = {"x-amz-copy-source": self._copy_source(src), **self._class_header()}
        await self.client.request("PUT", dst, headers=headers, error_in_body=True)

    async def delete_object(self, key: str) -> None:
        """DeleteObject (S3 answers 204 whether or not the key existed)."""
        await self.client.request("DELETE", key, ok=(200, 204))

    async def delete_objects(self, keys: Sequence[str]) -> None:
        """DeleteObjects for up to 1000 keys; raises the first per-key error but NoSuchKey."""
        if not keys:
            return
        if len(keys) > MAX_DELETE_BATCH:
            raise ValueError("DeleteObjects takes at most 1000 keys")
        root = ET.Element("Delete")
        ET.SubElement(root, "Quiet").text = "true"
        for key in keys:
            ET.SubElement(ET.SubElement(root, "Object"), "Key").text = key
        body = _xml_bytes(root)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # required by S3
        response = await self.client.request(
            "POST", None, query=[("delete", "")], headers={"content-md5": md5}, body=body
        )
        result = parse_xml(response.body)
        for error in children(result, "Error"):
            code = child_text(error, "Code")
            if code != "NoSuchKey":
                raise errors.make_error(
                    500, code, child_text(error, "Message"), resource=child_text(error, "Key")
                )

    # -- multipart ---------------------------------------------------------------------------

    async def create_multipart(self, key: str) -> str:
        """CreateMultipartUpload; returns the UploadId.

        Retried like an idempotent call: a retry after a lost answer can leak one empty
        upload, which the purge sweep (and R2 after 7 days) removes.
        """
        headers = {"content-type": OCTET_STREAM, **self._class_header()}
        response = await self.client.request(
            "POST", key, query=[("uploads", "")], headers=headers, body=b""
        )
        upload_id = child_text(parse_xml(response.body), "UploadId")
        if not upload_id:
            raise errors.S3Error(response.status, "MalformedXML", "no UploadId in answer")
        return upload_id

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | bytearray
    ) -> str:
        """UploadPart; returns the part's ETag. Idempotent: same number, same bytes."""
        response = await self.client.request(
            "PUT", key, query=[("partNumber", str(number)), ("uploadId", upload_id)], body=body
        )
        etag = response.headers.get("etag", "")
        if not etag:
            raise errors.S3Error(response.status, "MissingETag", "UploadPart answer has no ETag")
        return etag

    async def upload_part_copy(
        self, key: str, upload_id: str, number: int, src: str, first: int, last: int
    ) -> str:
        """UploadPartCopy of src bytes [first, last] (inclusive); returns the ETag."""
        headers = {
            "x-amz-copy-source": self._copy_source(src),
            "x-amz-copy-source-range": f"bytes={first}-{last}",
        }
        response = await self.client.request(
            "PUT",
            key,
            query=[("partNumber", str(number)), ("uploadId", upload_id)],
            headers=headers,
            error_in_body=True,
        )
        etag = child_text(parse_xml(response.body), "ETag")
        if not etag:
            raise errors.S3Error(response.status, "MissingETag", "UploadPartCopy has no ETag")
        return etag

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> None:
        """CompleteMultipartUpload with (number, etag) pairs in ascending order.

        Raises NoSuchUpload if the upload is gone -- which after a retried call can mean
        the first attempt succeeded: callers check the object.
        """
        root = ET.Element("CompleteMultipartUpload")
        for number, etag in parts:
            part = ET.SubElement(root, "Part")
            ET.SubElement(part, "PartNumber").text = str(number)
            ET.SubElement(part, "ETag").text = etag
        await self.client.request(
            "POST",
            key,
            query=[("uploadId", upload_id)],
            body=_xml_bytes(root),
            error_in_body=True,
        )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; an upload already gone is fine (safe to run twice)."""
        try:
            await self.client.request("DELETE", key, query=[("uploadId", upload_id)], ok=(200, 204))
        except errors.NoSuchUpload:
            pass

    async def list_multipart_uploads(
        self, prefix: str, key_marker: str = "", upload_id_marker: str = ""
    ) -> tuple[list[UploadInfo], tuple[str, str] | None]:
        """One page of ListMultipartUploads: (uploads, next (key, upload-id) markers)."""
        query = [("uploads", ""), ("prefix", prefix)]
        if key_marker:
            query.append(("key-marker", key_marker))
            if upload_id_marker:
                query.append(("upload-id-marker", upload_id_marker))
        response = await self.client.request("GET", None, query=query)
        root = parse_xml(response.body)
        uploads = [
            UploadInfo(
                key=child_text(item, "Key"),
                upload_id=child_text(item, "UploadId"),
                initiated=_iso_time(child_text(item, "Initiated")),
            )
            for item in children(root, "Upload")
        ]
        if child_text(root, "IsTruncated").lower() != "true":
            return uploads, None
        markers = (child_text(root, "NextKeyMarker"), child_text(root, "NextUploadIdMarker"))
        if not markers[0] and uploads:
            markers = (uploads[-1].key, uploads[-1].upload_id)
        return uploads, markers

    async def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        """Every uploaded part of an upload (paged ListParts). Raises NoSuchUpload."""
        parts: list[PartInfo] = []
        marker = ""
        while True:
            query = [("uploadId", upload_id)]
            if marker:
                query.append(("part-number-marker", marker))
            root = parse_xml((await self.client.request("GET", key, query=query)).body)
            parts.extend(
                PartInfo(
                    number=int(child_text(item, "PartNumber")),
                    etag=child_text(item, "ETag"),
                    size=int(child_text(item, "Size", "0")),
                )
                for item in children(root, "Part")
            )
            marker = child_text(root, "NextPartNumberMarker")
            if child_text(root, "IsTruncated").lower() != "true" or not marker:
                return parts
