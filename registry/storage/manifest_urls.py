"""URLs on layers of pushed manifests (``validation.manifests.urls``), as the reference
enforces them. Pure, no I/O.

The reference (distribution v3: ``registry/handlers/app.go`` builds the regexps,
``registry/storage/ocimanifesthandler.go`` and ``schema2manifesthandler.go`` apply them):

- validation enabled (the default) and neither ``allow`` nor ``deny`` set: every URL is
  refused (app.go installs the allow regexp ``^$``);
- otherwise a URL is refused unless it matches one of ``allow`` (when ``allow`` is set) and
  none of ``deny`` (when set); so ``deny`` alone allows everything else (the reference's
  docs say an unset ``allow`` refuses every URL; its code does not, and we follow the code);
- validation disabled: no lists, only the URL checks below;
- always: the URL must parse, its scheme must be http or https, it must have no fragment.
  Patterns are searched, not anchored (Go's ``MatchString``); each is used on its own, which
  is what the reference's ``(?:a)|(?:b)`` join means.

Which references the rules touch, and which of those need not exist in the repository,
depends on the manifest type and the reference's media type: ``manifests.URL_RULES``.
Patterns are Python ``re``, which reads the common RE2 syntax alike (``\\pL`` classes and
``\\z`` are RE2-only).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # Go's url.Parse refuses ASCII control bytes
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")  # ... and "%" not followed by two hex digits
# Characters Go's url.Parse accepts in a host (unreserved, sub-delims, ':', '[]', '<>"',
# '%' escapes) plus any non-ASCII character.
_HOST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:\[\]<>\"%\x80-\U0010ffff]*")
_PORT = re.compile(r"(:[0-9]*)?")


def url_parse_problem(url: str) -> str | None:
    """Why Go's ``url.Parse`` would refuse `url`, or None. An approximation of it: control
    characters, bad percent escapes outside the query, an invalid host or port."""
    if _CONTROL.search(url):
        return "contains a control character"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced "[" in the host
        return "is not a valid URL"
    if _BAD_ESCAPE.search(parts.netloc + parts.path + parts.fragment):
        return "has an invalid percent escape"
    host = parts.netloc.rpartition("@")[2]
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or not _PORT.fullmatch(host[end + 1 :]):
            return "has an invalid host or port"
    elif ":" in host:
        host, _, port = host.rpartition(":")
        if not port.isdecimal() and port != "":
            return "has an invalid port"
    if not _HOST.fullmatch(host):
        return "has an invalid host"
    return None


@dataclass(frozen=True)
class URLRules:
    """The allow and deny lists. ``None``: no such list; ``allow == ()``: nothing is allowed.

    The default (no lists) is the reference with validation disabled; an app built from a
    Config gets :meth:`compile` of ``validation.manifests.urls`` (whose default refuses
    every URL).
    """

    allow: tuple[re.Pattern[str], ...] | None = None
    deny: tuple[re.Pattern[str], ...] | None = None

    @classmethod
    def compile(cls, allow: Sequence[str], deny: Sequence[str], *, enabled: bool) -> URLRules:
        """The reference's reading of the lists. Raises re.error for a bad pattern (the
        config loader has refused those already, naming the key)."""
        if not enabled:
            return cls()
        if not allow and not deny:
            return cls(allow=())
        return cls(
            tuple(re.compile(p) for p in allow) if allow else None,
            tuple(re.compile(p) for p in deny) if deny else None,
        )

    def problem(self, url: str) -> str | None:
        """Why `url` is refused, or None if it may appear on a layer."""
        parse = url_parse_problem(url)
        if parse is not None:
            return parse
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):  # urlsplit lowercases it, as Go does
            return "the scheme must be http or https"
        if parts.fragment:
            return "URLs on layers must not have a fragment"
        if self.allow == ():
            return "this registry accepts no URLs on layers (validation.manifests.urls)"
        if self.allow is not None and not any(p.search(url) for p in self.allow):
            return "not allowed by this registry's validation.manifests.urls.allow"
        if self.deny is not None and any(p.search(url) for p in self.deny):
            return "refused by this registry's validation.manifests.urls.deny"
        return None


# The rules with no lists (the reference with validation disabled): only the URL checks.
# The default for storage built without a Config; build_app passes the configured rules.
NO_URL_LISTS = URLRules()
