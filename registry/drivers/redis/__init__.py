"""A Redis client of ours on trio (RESP2): ``protocol.py`` (pure encode/decode) and
``client.py`` (pool, deadlines, outage back-off). Knows commands and replies only: what
the registry keeps in Redis is ``storage/descriptor_cache.py`` and ``storage/redis_lock.py``."""

from __future__ import annotations

from .client import PoolTimeout, RedisClient, RedisOptions, RedisUnavailable
from .protocol import ProtocolError, ReplyError

__all__ = [
    "PoolTimeout", "ProtocolError", "RedisClient", "RedisOptions", "RedisUnavailable",
    "ReplyError",
]
