"""Rate limiting per client address (our extension, off by default).

Configuration (under the reference's free-form ``policy`` section, next to ``access``)::

    policy:
      ratelimit:
        enabled: true
        rate: 20              # requests per second, sustained, per client address
        burst: 200            # requests a client may make at once (docker pushes in parallel)
        trustedproxies:       # addresses whose X-Forwarded-For we believe (traefik, a LB)
          - 10.0.0.0/8

A token bucket per client: it holds up to ``burst`` tokens, refills at ``rate`` per second,
and each request takes one. An empty bucket answers 429 TOOMANYREQUESTS with ``Retry-After``
(whole seconds until a token is back). The check runs before authentication, so password
guessing is limited too, before it costs a bcrypt check.

The client is the peer address, or, when the peer is a trusted proxy, the right-most
``X-Forwarded-For`` entry that is not itself a trusted proxy (entries further left are
whatever the client chose to send). Buckets live in worker memory: each worker process
limits on its own (with ``http.workers: 2`` a client may get up to twice the rate), and at
most ``MAX_CLIENTS`` buckets are kept (least recently used dropped first; a dropped bucket
was idle and would be full anyway).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ..config import ConfigError
from ..errors import ErrorCode, RegistryError

if TYPE_CHECKING:
    from .request import Request

MAX_CLIENTS = 100_000  # buckets kept per worker (~150 bytes each)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RateLimitConfig:
    rate: float  # tokens per second
    burst: int
    trusted: tuple[Network, ...] = ()


def parse_ratelimit(section: Mapping[str, Any] | None) -> RateLimitConfig | None:
    """``policy.ratelimit`` as a RateLimitConfig, None when absent or disabled."""
    if not section or not hasattr(section, "get"):
        return None
    enabled = section.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError("policy.ratelimit.enabled: expected a boolean")
    if not enabled:
        return None
    rate = section.get("rate", 20)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
        raise ConfigError("policy.ratelimit.rate: expected a positive number (requests/second)")
    burst = section.get("burst", max(1, int(rate * 10)))
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigError("policy.ratelimit.burst: expected a positive integer")
    raw = section.get("trustedproxies") or ()
    items = [raw] if isinstance(raw, str) else list(raw)
    trusted = []
    for item in items:
        try:
            trusted.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ConfigError(
                f"policy.ratelimit.trustedproxies: not an address or network: {item!r}"
            ) from None
    return RateLimitConfig(float(rate), burst, tuple(trusted))


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


class RateLimiter:
    """Token buckets per client address (see the module doc)."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _trusted(self, addr: str) -> bool:
        ip = _address(addr)
        return ip is not None and any(ip in net for net in self.config.trusted)

    def client_key(self, peer: str, forwarded_for: str | None) -> str:
        if not forwarded_for or not self._trusted(peer):
            return peer
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            if not hop:
                continue
            if not self._trusted(hop):
                ip = _address(hop)
                return str(ip) if ip is not None else hop[:100]
        return peer

    def take(self, key: str, now: float) -> float:
        """Take a token for ``key``; 0.0 if granted, else seconds until one is back."""
        rate, burst = self.config.rate, self.config.burst
        tokens, last = self._buckets.pop(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / rate
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return wait

    def check(self, req: Request) -> None:
        """Raise TOOMANYREQUESTS (429 + Retry-After) when the client's bucket is empty."""
        key = self.client_key(req.client, req.headers.get("x-forwarded-for"))
        wait = self.take(key, trio.current_time())
        if wait > 0:
            raise RegistryError(
                ErrorCode.TOOMANYREQUESTS,
                "too many requests; slow down",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )


def build_ratelimiter(raw_config: Mapping[str, Any]) -> RateLimiter | None:
    """From ``Config.raw``: the limiter for ``policy.ratelimit``, or None. Raises ConfigError."""
    policy = raw_config.get("policy")
    section = policy.get("ratelimit") if isinstance(policy, Mapping) else None
    parsed = parse_ratelimit(section)
    return RateLimiter(parsed) if parsed is not None else None
