"""TLS when the registry is exposed directly: ``http.tls.certificate`` / ``key`` (issue 6,
item 4). Certificates come from trustme; docker trusts the CA through certs.d."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import httpx
import pytest
import trustme
from test_auth_process import docker_cli, htpasswd_config, htpasswd_file, run_registry

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e
_ = docker_cli  # the fixture, re-exported for this module

CERTS_D = Path("/etc/docker/certs.d")


def make_certs(tmp_path: Path) -> tuple[trustme.CA, Path, Path, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_path = tmp_path / "server.crt", tmp_path / "server.key", tmp_path / "ca.crt"
    server.private_key_pem.write_to_path(str(key))
    with open(cert, "wb") as f:  # leaf first, then the chain (what http.tls.certificate holds)
        f.writelines(blob.bytes() for blob in server.cert_chain_pems)
    ca.cert_pem.write_to_path(str(ca_path))
    return ca, cert, key, ca_path


def tls_config(cert: Path, key: Path) -> dict:
    return {"http": {"tls": {"certificate": str(cert), "key": str(key)}}}


def test_https_with_a_trusted_ca(tmp_path: Path) -> None:
    ca, cert, key, _ = make_certs(tmp_path)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with run_registry(tmp_path, tls_config(cert, key), scheme="https", verify=context) as reg:
        with reg.client() as c:
            assert c.get("/v2/").status_code == 200
            start = c.post("/v2/tls/app/blobs/uploads/")
            assert start.status_code == 202
            assert start.headers["Location"].startswith(f"https://{reg.host}/v2/tls/app/")
        with pytest.raises(httpx.ConnectError):  # an unknown CA is refused
            httpx.get(f"{reg.url}/v2/", timeout=5)
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.get(f"http://{reg.host}/v2/", timeout=5)


def test_tls_with_htpasswd(tmp_path: Path) -> None:
    _, cert, key, ca_path = make_certs(tmp_path)
    users = htpasswd_file(tmp_path / "htpasswd", {"alice": "wonderland"})
    config = {**tls_config(cert, key), **htpasswd_config(users)}
    trust = ssl.create_default_context(cafile=str(ca_path))
    with run_registry(tmp_path, config, scheme="https", verify=trust) as reg, reg.client() as c:
        assert c.get("/v2/").status_code == 401
        assert c.get("/v2/", auth=("alice", "wonderland")).status_code == 200


def test_docker_push_pull_over_tls_with_ca_in_certs_d(tmp_path: Path, docker_cli: str) -> None:
    _, cert, key, ca_path = make_certs(tmp_path)
    port = e2e.free_port()
    host = f"127.0.0.1:{port}"
    certs = CERTS_D / host
    try:
        certs.mkdir(parents=True)
    except OSError as exc:
        reason = f"cannot write {certs}: {exc}"
        if e2e.in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        shutil.copy(ca_path, certs / "ca.crt")
        with run_registry(tmp_path, tls_config(cert, key), port=port, scheme="https",
                          verify=ssl.create_default_context(cafile=str(ca_path))) as reg:
            ref = f"{host}/tls/busybox:v1"
            e2e.run([docker_cli, "tag", e2e.ensure_base_image(docker_cli), ref])
            try:
                e2e.run([docker_cli, "push", ref])
                e2e.docker_remove_images(docker_cli, ref)
                e2e.run([docker_cli, "pull", ref])
            finally:
                e2e.docker_remove_images(docker_cli, ref)
            log = reg.log()
        # Every request came over TLS (docker falls back to plain HTTP on loopback if not).
        assert any(
            "http.request.method=PUT" in line
            and "http.request.uri=/v2/tls/busybox/manifests/v1 " in line
            and "http.response.status=201" in line
            for line in log.splitlines()
        ), log[-3000:]
    finally:
        shutil.rmtree(certs, ignore_errors=True)
