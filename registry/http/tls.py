"""The API listener's TLS context from ``http.tls``, as registry:3 (v3.0.0, registry/registry.go).

registry:3's rules, and how Python's ``ssl`` (OpenSSL) carries each:

- ``minimumtls``: ``tls1.2`` (the default) or ``tls1.3``. v3.0.0's documentation also lists
  tls1.0 and tls1.1 but its code refuses them at start-up ("unknown minimum TLS level"); so
  do we (config/build.py).
- ``ciphersuites``: Go's names of TLS 1.0-1.2 suites, mapped to OpenSSL's names
  (:data:`CIPHER_SUITES`); empty means v3's defaults (ECDHE with AES-GCM or ChaCha20).
  TLS 1.3 suites are configurable neither in Go nor in Python's ``ssl`` (OpenSSL's
  ``SSL_CTX_set_ciphersuites`` is not exposed): their names are accepted and change nothing,
  as in v3. With ``minimumtls: tls1.3`` v3 ignores the list with a warning; so do we. Suites
  this OpenSSL does not offer (3DES at its default security level) are left out with a
  warning; a list of only such suites is a start-up error.
- ``clientcas``: PEM files whose certificates, and only those, verify client certificates
  (never the system's CA bundle: a certificate any public CA issued must not pass).
- ``clientauth`` (only with ``clientcas``; default ``require-and-verify-client-cert``):
  Go's four modes map to ``ssl.VerifyMode``. ``verify-client-cert-if-given`` is
  CERT_OPTIONAL and ``require-and-verify-client-cert`` CERT_REQUIRED, exactly. Go's
  ``request-client-cert`` and ``require-any-client-cert`` accept a certificate without
  verifying it; ``ssl`` cannot (no verify callback), so they verify against ``clientcas``
  like the two others (CERT_OPTIONAL, CERT_REQUIRED): stricter, and said in a warning.

:func:`build_context` is what the listener uses (``conn.ServerConfig.create_ssl_context``);
it raises :class:`TLSConfigError` with one line naming the key.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from ..config.model import TLS_CLIENT_AUTH_DEFAULT, TLS_MINIMUM_DEFAULT

log = logging.getLogger("registry")

# Keyed by config.model's TLS_VERSIONS and TLS_CLIENT_AUTH (config/build.py checks names).
MINIMUM_TLS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}

CLIENT_AUTH = {
    "request-client-cert": ssl.CERT_OPTIONAL,  # Go: asks, accepts any certificate
    "require-any-client-cert": ssl.CERT_REQUIRED,  # Go: requires one, does not verify it
    "verify-client-cert-if-given": ssl.CERT_OPTIONAL,
    "require-and-verify-client-cert": ssl.CERT_REQUIRED,
}
UNVERIFIED_MODES = frozenset({"request-client-cert", "require-any-client-cert"})

# Go's cipher suite names (v3's cipherSuites table) -> OpenSSL's; None: a TLS 1.3 suite,
# accepted and not configurable (see the module doc).
CIPHER_SUITES: dict[str, str | None] = {
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
DEFAULT_CIPHER_SUITES = (  # v3's defaultCipherSuites (its TLS 1.3 three are always on)
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
)


class TLSConfigError(ValueError):
    """``http.tls`` cannot be used; the message is one line naming the key."""


@dataclass(frozen=True)
class TLSSettings:
    """``http.tls`` as read by config/build.py (names already checked against the tables
    above, except ``ciphersuites``, which :func:`openssl_ciphers` checks)."""

    certificate: str
    key: str
    clientcas: tuple[str, ...] = ()
    clientauth: str = TLS_CLIENT_AUTH_DEFAULT
    minimumtls: str = TLS_MINIMUM_DEFAULT
    ciphersuites: tuple[str, ...] = ()


def openssl_ciphers(names: tuple[str, ...]) -> str:
    """The OpenSSL cipher string for Go's suite ``names`` (empty: v3's defaults); TLS 1.3
    names contribute nothing. Raises TLSConfigError for a name v3 does not know."""
    chosen = []
    for name in names or DEFAULT_CIPHER_SUITES:
        if name not in CIPHER_SUITES:
            raise TLSConfigError(
                f"http.tls.ciphersuites: unknown TLS cipher suite {name!r}"
                " (registry:3's names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"
            )
        openssl = CIPHER_SUITES[name]
        if openssl is not None:
            chosen.append(openssl)
    return ":".join(chosen)


def build_context(tls: TLSSettings, alpn: list[str]) -> ssl.SSLContext:
    """A server SSLContext for ``tls`` offering ``alpn``. Raises TLSConfigError (one line
    naming the key) for a certificate, key or CA file that cannot be loaded and for a
    cipher list this OpenSSL cannot serve; logs a warning for each rule it bends."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # verifies nothing until told to
    ctx.minimum_version = MINIMUM_TLS[tls.minimumtls]
    ctx.options |= ssl.OP_NO_COMPRESSION  # RFC 7540 9.2.1 (HTTP/2 forbids it)
    if ctx.minimum_version >= ssl.TLSVersion.TLSv1_3:
        if tls.ciphersuites:
            log.warning("http.tls.ciphersuites is ignored with minimumtls %s: TLS 1.3 cipher"
                        " suites are not configurable (as registry:3)", tls.minimumtls)
    else:
        _set_ciphers(ctx, tls.ciphersuites)
    ctx.set_alpn_protocols(alpn)
    try:
        ctx.load_cert_chain(tls.certificate, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"http.tls.certificate/key: cannot load {tls.certificate} with {tls.key}: {_why(exc)}"
        ) from None
    for ca in tls.clientcas:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"http.tls.clientcas: cannot load {ca}: {_why(exc)}") from None
    if tls.clientcas:
        ctx.verify_mode = CLIENT_AUTH[tls.clientauth]
        if tls.clientauth in UNVERIFIED_MODES:
            log.warning("http.tls.clientauth %s: client certificates are verified against"
                        " http.tls.clientcas all the same (Python's ssl cannot accept an"
                        " unverified one; registry:3 would)", tls.clientauth)
    return ctx


def _set_ciphers(ctx: ssl.SSLContext, names: tuple[str, ...]) -> None:
    wanted = openssl_ciphers(names)
    if not wanted:  # only TLS 1.3 names: Go then completes no TLS 1.2 handshake at all
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return
    try:
        ctx.set_ciphers(wanted)
    except ssl.SSLError:
        raise TLSConfigError(
            f"http.tls.ciphersuites: this OpenSSL offers none of {', '.join(names)}"
        ) from None
    offered = {c["name"] for c in ctx.get_ciphers()}
    missing = [n for n in names if CIPHER_SUITES.get(n) and CIPHER_SUITES[n] not in offered]
    if missing:
        log.warning("http.tls.ciphersuites: this OpenSSL does not offer %s; left out",
                    ", ".join(missing))


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
