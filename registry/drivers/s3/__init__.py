"""The S3 / Cloudflare R2 storage driver (issue 4).

Modules: ``sigv4`` (AWS Signature V4, pure), ``client`` (httpx on trio: signing, deadlines,
retries, outage logging), ``errors`` (S3 XML errors as typed exceptions), ``api`` (the S3
operations used), ``params`` (the ``storage.s3`` options), ``writer`` (resumable R2-safe
multipart uploads), ``reader`` (streamed ranged GETs), ``driver`` (``S3Driver``).
"""
