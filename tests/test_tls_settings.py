"""``http.tls.clientcas`` / ``clientauth`` / ``minimumtls`` / ``ciphersuites`` enforced on the
wire, as registry:3 (issue 15, item 1; registry/http/tls.py).

The real app and listener settings (server.hypercorn_config) on 127.0.0.1:0, clients over
HTTP/1.1 (our loop, h1server.py) and HTTP/2 (hypercorn's, by ALPN). Certificates from
trustme (ECDSA keys: the cipher names below are the ECDSA ones).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
import yaml
from conftest import serve_asgi
from test_auth_process import run_registry
from test_tls import make_certs

from registry.config import Config, ConfigError, load_config
from registry.server import build_app, hypercorn_config

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

BOUND = 20.0  # seconds: any one test's exchanges (each is a handshake and one request)
PROTOCOLS = ("HTTP/1.1", "HTTP/2")


class Certs:
    def __init__(self, tmp_path: Path) -> None:
        self.ca, self.cert, self.key, self.ca_path = make_certs(tmp_path)
        self.client_ca = trustme.CA()  # the CA http.tls.clientcas names
        self.client_ca_path = tmp_path / "client-ca.crt"
        self.client_ca.cert_pem.write_to_path(str(self.client_ca_path))
        self.client = self.client_ca.issue_cert("client@example.com")
        self.stranger = trustme.CA().issue_cert("stranger@example.com")  # another CA's


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


def registry_config(tmp_path: Path, certs: Certs, **tls: Any) -> Config:
    data = {
        "version": "0.1",
        "log": {"accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "root")}},
        "http": {"tls": {"certificate": str(certs.cert), "key": str(certs.key), **tls}},
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    config, warnings = load_config(str(path), {})
    assert not warnings, warnings
    return config


async def serve(nursery: trio.Nursery, config: Config) -> str:
    return await serve_asgi(nursery, build_app(config), hypercorn_config(config))


def client_context(
    certs: Certs, *, cert: trustme.LeafCert | None = None,
    maximum: ssl.TLSVersion | None = None, ciphers: str | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca_path))
    if cert is not None:
        cert.configure_cert(ctx)
    if maximum is not None:
        ctx.maximum_version = maximum
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


async def get(url: str, ctx: ssl.SSLContext, protocol: str) -> httpx.Response:
    """``GET /v2/`` over ``protocol``, checked to be the one the exchange used. Raises
    httpx.TransportError when the server refuses the handshake (or, with TLS 1.3, fails it
    after the client's side completed: the first read then breaks)."""
    async with httpx.AsyncClient(
        verify=ctx, http1=protocol == "HTTP/1.1", http2=protocol == "HTTP/2", timeout=BOUND
    ) as client:
        r = await client.get(f"{url}/v2/")
    assert r.http_version == protocol
    return r


async def refused(url: str, ctx: ssl.SSLContext, protocol: str) -> bool:
    try:
        r = await get(url, ctx, protocol)
    except httpx.TransportError:
        return True
    raise AssertionError(f"expected a refused handshake, got {r.status_code}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_client_certificate_required_by_default_with_clientcas(
    tmp_path: Path, certs: Certs, nursery: trio.Nursery, protocol: str
) -> None:
    """clientcas without clientauth: require-and-verify-client-cert (v3's default)."""
    config = registry_config(tmp_path, certs, clientcas=[str(certs.client_ca_path)])
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        assert await refused(url, client_context(certs), protocol)
        assert await refused(url, client_context(certs, cert=certs.stranger), protocol)
        ok = await get(url, client_context(certs, cert=certs.client), protocol)
        assert ok.status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_verify_client_cert_if_given(
    tmp_path: Path, certs: Certs, nursery: trio.Nursery, protocol: str
) -> None:
    config = registry_config(
        tmp_path, certs, clientcas=[str(certs.client_ca_path)],
        clientauth="verify-client-cert-if-given",
    )
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        assert (await get(url, client_context(certs), protocol)).status_code == 200
        assert await refused(url, client_context(certs, cert=certs.stranger), protocol)
        ok = await get(url, client_context(certs, cert=certs.client), protocol)
        assert ok.status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_without_clientcas_no_certificate_is_asked(
    tmp_path: Path, certs: Certs, nursery: trio.Nursery, protocol: str
) -> None:
    """clientauth alone changes nothing (v3: "if clientcas is not provided, TLS Client
    Authentication is disabled, and the mode is ignored")."""
    config = registry_config(tmp_path, certs, clientauth="require-and-verify-client-cert")
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        assert (await get(url, client_context(certs), protocol)).status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_minimumtls_13_refuses_a_tls_12_client(
    tmp_path: Path, certs: Certs, nursery: trio.Nursery, protocol: str
) -> None:
    config = registry_config(tmp_path, certs, minimumtls="tls1.3")
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        assert await refused(url, client_context(certs, maximum=ssl.TLSVersion.TLSv1_2), protocol)
        assert (await get(url, client_context(certs), protocol)).status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_default_minimum_is_tls_12(
    tmp_path: Path, certs: Certs, nursery: trio.Nursery, protocol: str
) -> None:
    config = registry_config(tmp_path, certs)
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        tls12 = client_context(certs, maximum=ssl.TLSVersion.TLSv1_2)
        assert (await get(url, tls12, protocol)).status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_ciphersuites_refuse_a_cipher_outside_the_list(
    tmp_path: Path, certs: Certs, nursery: trio.Nursery, protocol: str
) -> None:
    config = registry_config(
        tmp_path, certs, ciphersuites=["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]
    )
    tls12 = ssl.TLSVersion.TLSv1_2
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        other = client_context(certs, maximum=tls12, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
        assert await refused(url, other, protocol)
        listed = client_context(certs, maximum=tls12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
        assert (await get(url, listed, protocol)).status_code == 200


async def test_default_ciphersuites_refuse_cbc(
    tmp_path: Path, certs: Certs, nursery: trio.Nursery
) -> None:
    """With no list, v3's defaults: ECDHE with AES-GCM or ChaCha20 only."""
    config = registry_config(tmp_path, certs)
    tls12 = ssl.TLSVersion.TLSv1_2
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        cbc = client_context(certs, maximum=tls12, ciphers="ECDHE-ECDSA-AES128-SHA")
        assert await refused(url, cbc, "HTTP/1.1")
        chacha = client_context(certs, maximum=tls12, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305")
        assert (await get(url, chacha, "HTTP/1.1")).status_code == 200


@pytest.mark.parametrize(
    "tls, message",
    [
        ({"minimumtls": "tls1.0"}, "http.tls.minimumtls: unknown minimum TLS level 'tls1.0'"),
        ({"minimumtls": "TLS1.2"}, "http.tls.minimumtls: unknown minimum TLS level"),
        ({"clientauth": "optional"}, "http.tls.clientauth: invalid client auth mode 'optional'"),
    ],
)
def test_bad_tls_names_are_refused_when_loading(
    tmp_path: Path, certs: Certs, tls: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        registry_config(tmp_path, certs, **tls)


@pytest.mark.parametrize(
    "tls, message",
    [
        ({"ciphersuites": ["TLS_ECDHE_RSA_WITH_RC4_128_SHA"]},
         "http.tls.ciphersuites: unknown TLS cipher suite 'TLS_ECDHE_RSA_WITH_RC4_128_SHA'"),
        ({"ciphersuites": ["TLS_RSA_WITH_3DES_EDE_CBC_SHA"]},
         "http.tls.ciphersuites: this OpenSSL offers none of TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
        ({"clientcas": ["/nonexistent/ca.pem"]},
         "http.tls.clientcas: cannot load /nonexistent/ca.pem: No such file"),
    ],
)
def test_unusable_tls_settings_stop_start_up(
    tmp_path: Path, certs: Certs, tls: dict[str, Any], message: str
) -> None:
    config = registry_config(tmp_path, certs, **tls)
    with pytest.raises(ConfigError, match=message):
        hypercorn_config(config)


def test_ciphersuites_ignored_with_minimumtls_13(
    tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """As v3: the list is not even checked, and a warning says so."""
    config = registry_config(tmp_path, certs, minimumtls="tls1.3", ciphersuites=["NOPE"])
    hc = hypercorn_config(config)
    assert hc.create_ssl_context().minimum_version == ssl.TLSVersion.TLSv1_3
    assert "ciphersuites is ignored with minimumtls tls1.3" in caplog.text


def test_registry_process_with_client_certificates(tmp_path: Path, certs: Certs) -> None:
    """`registry serve` end to end (TLS context built before the workers fork): a client
    without a certificate is refused over both protocols, one with a certificate gets its
    answers, and the refusals leave no traceback in the log (run_registry checks)."""
    tls = {"certificate": str(certs.cert), "key": str(certs.key),
           "clientcas": [str(certs.client_ca_path)]}
    with run_registry(tmp_path, {"http": {"tls": tls}}, scheme="https",
                      verify=client_context(certs, cert=certs.client)) as reg:
        for http2 in (False, True):
            with (
                pytest.raises(httpx.TransportError),
                httpx.Client(verify=client_context(certs), http2=http2, timeout=BOUND) as c,
            ):
                c.get(f"{reg.url}/v2/")
            with httpx.Client(verify=client_context(certs, cert=certs.client), http2=http2,
                              timeout=BOUND) as c:
                r = c.get(f"{reg.url}/v2/")
            assert (r.status_code, r.http_version) == (200, "HTTP/2" if http2 else "HTTP/1.1")


def test_registry_process_refuses_an_unloadable_ca_file(tmp_path: Path, certs: Certs) -> None:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({
        "version": "0.1",
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "root")}},
        "http": {"addr": "127.0.0.1:0", "tls": {
            "certificate": str(certs.cert), "key": str(certs.key),
            "clientcas": [str(tmp_path / "missing.pem")],
        }},
    }))
    env = e2e.clean_env()
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-m", "registry", "serve", str(config)],
        check=False, capture_output=True, text=True, env=env, timeout=BOUND,
    )
    assert done.returncode == 2
    assert f"http.tls.clientcas: cannot load {tmp_path / 'missing.pem'}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "mode, verify, warned",
    [
        ("request-client-cert", ssl.CERT_OPTIONAL, True),
        ("require-any-client-cert", ssl.CERT_REQUIRED, True),
        ("verify-client-cert-if-given", ssl.CERT_OPTIONAL, False),
        ("require-and-verify-client-cert", ssl.CERT_REQUIRED, False),
    ],
)
def test_clientauth_modes_map_to_verify_modes(
    tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture,
    mode: str, verify: ssl.VerifyMode, warned: bool,
) -> None:
    """Go's two modes that skip verification cannot be had in Python's ssl: they verify
    against clientcas (stricter) and a warning says so."""
    config = registry_config(tmp_path, certs, clientcas=[str(certs.client_ca_path)],
                             clientauth=mode)
    ctx = hypercorn_config(config).create_ssl_context()
    assert ctx is not None and ctx.verify_mode == verify
    assert ("cannot accept an unverified one" in caplog.text) == warned


async def test_system_cas_do_not_verify_client_certificates(
    tmp_path: Path, certs: Certs, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only clientcas verify clients, never the system's CA bundle (a context that loaded
    the default paths would let any publicly issued certificate in; registry:3's pool holds
    clientcas alone). SSL_CERT_FILE, OpenSSL's default bundle, stands for it here."""
    system_ca = trustme.CA()
    system_ca_path = tmp_path / "system-ca.pem"
    system_ca.cert_pem.write_to_path(str(system_ca_path))
    monkeypatch.setenv("SSL_CERT_FILE", str(system_ca_path))
    config = registry_config(tmp_path, certs, clientcas=[str(certs.client_ca_path)])
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        by_system_ca = system_ca.issue_cert("public@example.com")
        assert await refused(url, client_context(certs, cert=by_system_ca), "HTTP/1.1")
