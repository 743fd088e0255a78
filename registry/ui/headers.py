"""The headers every ``/ui`` response carries, and the caching policies (API.md).

A leaf of the UI package: the app (``http/app.py``) adds :data:`SECURITY_HEADERS` to every
answer of a UI route, errors included.
"""

from __future__ import annotations

# No inline script or style, nothing from another origin, no framing, no <base>: the page
# is plain files of ours (API.md "Security headers").
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"same-origin"),
)
IMMUTABLE = b"public, max-age=31536000, immutable"  # hashed names: the bytes never change
NO_CACHE = b"no-cache"  # pages and plain names: revalidate (ETag) every time
NO_STORE = b"no-store"  # the JSON API: per user, changes with every push
