"""The pull-through cache (issue 16): ``upstream.py`` the client of one upstream registry,
``cache.py`` manifests and blobs fetched into storage, ``expiry.py`` the ttl. Sits between
http and storage: http -> proxy -> storage -> drivers."""

from .cache import BlobAnswer, FetchAborted, ProxyCache, Remote

__all__ = ["BlobAnswer", "FetchAborted", "ProxyCache", "Remote"]
