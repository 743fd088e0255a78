"""Logs a registry:3 pipeline can read (issue 15, item 2): logrus's text and JSON lines with
distribution v3.0.0's field names, a request id on each line of a request and in
``X-Request-Id``, the user on access lines, v3's line on SIGTERM.

The expected shapes were taken from registry-v3.0.0's own output for the same push and
pull (``../shared/bin/registry-v3.0.0``, formatter text and json).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import free_port
from oci import digest
from test_auth_htpasswd import write_htpasswd
from test_cli_process import _Serving

from registry import logs

USER, PASSWORD = "alice", "s3cret-pw"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Go's time.Duration.String(): "5.770729ms", "850ns", "12.5µs", "1m1.5s".
GO_DURATION = re.compile(r"(\d+h)?(\d+m)?\d+(\.\d+)?(ns|µs|ms|s)\Z")
RFC3339NANO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z\Z")
# logrus TextFormatter: key=value, the value bare or a Go-quoted string.
TEXT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?:\s|\Z)')
# v3's request fields (dcontext.GetRequestLogger) and response fields (GetResponseLogger).
REQUEST_FIELDS = {"http.request.id", "http.request.method", "http.request.uri",
                  "http.request.host", "http.request.remoteaddr", "http.request.useragent"}
RESPONSE_FIELDS = {"http.response.status", "http.response.written", "http.response.duration"}


def parse_text(line: str) -> dict[str, Any]:
    """A logrus text line as a dict (quoted values unquoted), checking that it is only
    pairs, that time, level and msg come first and the other keys sorted, as logrus writes."""
    pairs = TEXT_PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, line
    keys = [k for k, _ in pairs]
    assert keys[:3] == ["time", "level", "msg"] and keys[3:] == sorted(keys[3:]), keys
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def run_push_and_pull(tmp_path: Path, formatter: str) -> tuple[list[dict[str, Any]], list[httpx.Response]]:
    """Serve with ``formatter``, htpasswd auth and log.fields; push an image the way docker
    does (POST, PATCH, PUT per blob, then the manifest), pull it, ask for an unknown tag
    and once with a wrong password; stop with SIGTERM. Every stderr line parsed, and the
    responses."""
    write_htpasswd(tmp_path / "htpasswd", {USER: PASSWORD})
    port = free_port()
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        f"version: 0.1\nlog:\n  level: info\n  formatter: {formatter}\n"
        "  fields:\n    service: registry\n    environment: test\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path}/root\n"
        f"auth:\n  htpasswd:\n    realm: test\n    path: {tmp_path}/htpasswd\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  workers: 1\n  draintimeout: 2s\n"
    )
    responses: list[httpx.Response] = []
    with _Serving(tmp_path, str(cfg), port=port, REGISTRY_HTTP_SECRET="s") as srv:
        hooks = {"response": [lambda r: responses.append(r)]}
        with httpx.Client(base_url=srv.url, auth=(USER, PASSWORD), event_hooks=hooks,
                          headers={"User-Agent": 'probe "v1"'}, timeout=20) as c:
            config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer bytes"
            for blob in (config, layer):
                r = c.post("/v2/app/blobs/uploads/")
                r = c.patch(r.headers["location"], content=blob,
                            headers={"Content-Type": "application/octet-stream"})
                loc = r.headers["location"]
                r = c.put(loc + ("&" if "?" in loc else "?") + "digest=" + digest(blob))
                assert r.status_code == 201, r.text
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "size": len(config), "digest": digest(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "size": len(layer), "digest": digest(layer)}]}).encode()
            assert c.put("/v2/app/manifests/latest", content=manifest,
                         headers={"Content-Type": MANIFEST}).status_code == 201
            assert c.get("/v2/app/manifests/latest", headers={"Accept": MANIFEST}).status_code == 200
            got = c.get(f"/v2/app/blobs/{digest(layer)}")
            assert hashlib.sha256(got.content).hexdigest() == digest(layer)[7:]
            assert c.get("/v2/app/manifests/nope").status_code == 404
        with httpx.Client(base_url=srv.url, event_hooks=hooks, auth=(USER, "wrong"),
                          headers={"User-Agent": "intruder"}) as intruder:
            assert intruder.get("/v2/").status_code == 401  # logs a line during the request
    assert srv.proc.returncode == 0, srv.log
    parse = json.loads if formatter == "json" else parse_text
    return [parse(line) for line in srv.log.splitlines()], responses


def check_lines(lines: list[dict[str, Any]], responses: list[httpx.Response]) -> None:
    """What both formats must say (see the module doc)."""
    for line in lines:  # every line: logrus's keys, log.fields, the instance
        assert RFC3339NANO_UTC.match(line["time"]), line
        assert line["level"] in ("debug", "info", "warning", "error"), line
        assert line["service"] == "registry" and line["environment"] == "test", line
        assert line["instance.id"] and line["version"], line
    probe = f"python-httpx/{httpx.__version__}"  # _Serving's readiness probe
    access = [x for x in lines if x["msg"].startswith("response completed")
              and x["http.request.useragent"] != probe]
    # One access line per request, found by the id its response carried.
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == len(ids) == len(access), (ids, access)
    by_id = {x["http.request.id"]: x for x in access}
    assert set(by_id) == set(ids)
    for r in responses:
        x = by_id[r.headers["x-request-id"]]
        assert REQUEST_FIELDS | RESPONSE_FIELDS <= set(x), x
        assert x["http.request.method"] == r.request.method
        assert x["http.request.uri"] == r.request.url.raw_path.decode()
        assert x["http.request.host"] == r.request.url.netloc.decode()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", x["http.request.remoteaddr"]), x
        assert int(x["http.response.status"]) == r.status_code
        assert int(x["http.response.written"]) == len(r.content)
        assert GO_DURATION.match(x["http.response.duration"]), x
        if r.status_code == 401:
            assert "auth.user.name" not in x
        else:  # the user on access lines, as v3's auth.user.name
            assert x["auth.user.name"] == USER and x["http.request.useragent"] == 'probe "v1"'
            assert x["vars.name"] == "app", x
    by_path = {(x["http.request.method"], x["http.request.uri"]): x for x in access}
    assert by_path["PUT", "/v2/app/manifests/latest"]["vars.reference"] == "latest"
    assert by_path["PUT", "/v2/app/manifests/latest"]["http.request.contenttype"] == MANIFEST
    pulled = by_path["GET", "/v2/app/manifests/latest"]
    assert pulled["http.response.contenttype"] == MANIFEST and pulled["msg"] == "response completed"
    patches = [x for x in access if x["http.request.method"] == "PATCH"]
    assert len(patches) == 2 and all(x["http.request.uri"].endswith(x["vars.uuid"]) or
                                     f"/{x['vars.uuid']}?" in x["http.request.uri"] for x in patches)
    assert any(x.get("vars.digest", "").startswith("sha256:") for x in access)
    unknown = by_path["GET", "/v2/app/manifests/nope"]
    assert unknown["msg"] == "response completed with error"
    assert unknown["err.code"] == "manifest unknown" and unknown["err.message"], unknown
    # A line logged during a request (not the access line) carries that request's id.
    denied = by_id[responses[-1].headers["x-request-id"]]
    during = [x for x in lines if x.get("http.request.id") == denied["http.request.id"]]
    assert len(during) >= 2 and any(x["msg"].startswith("authentication failed") for x in during)
    # SIGTERM: v3's line, once (from the parent: a worker's last access line may follow it).
    stops = [x["msg"] for x in lines if x["msg"].startswith("stopping")]
    assert stops == ["stopping server gracefully. Draining connections for 2s"], stops


def test_json_lines_carry_v3s_flat_fields_for_a_push_and_a_pull(tmp_path: Path) -> None:
    """log.formatter json: each line one JSON object with v3's flat keys; the access line per
    request, its id in X-Request-Id; the shutdown line."""
    lines, responses = run_push_and_pull(tmp_path, "json")
    check_lines(lines, responses)
    ok = next(x for x in lines if x["msg"] == "response completed")
    assert isinstance(ok["http.response.status"], int)  # numbers stay numbers, as logrus's
    assert isinstance(ok["http.response.written"], int)


def test_text_lines_parse_as_logrus_for_a_push_and_a_pull(tmp_path: Path) -> None:
    """log.formatter text: time="..." level=... msg="..." then key=value sorted, quoted as
    logrus quotes (parse_text checks the whole line)."""
    lines, responses = run_push_and_pull(tmp_path, "text")
    check_lines(lines, responses)


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (850e-9, "850ns"), (12.5e-6, "12.5µs"), (0.005770729, "5.770729ms"),
     (0.002, "2ms"), (1.5, "1.5s"), (61.5, "1m1.5s"), (3600, "1h0m0s"), (2, "2s"),
     (3723.000000001, "1h2m3.000000001s")],
)
def test_durations_read_as_gos(seconds: float, text: str) -> None:
    """http.response.duration is Go's Duration.String(), as v3 logs it."""
    assert logs.go_duration(seconds) == text


@pytest.mark.parametrize(
    "value, text",
    [("abc/d-e.f_g@h^i+j", "abc/d-e.f_g@h^i+j"), ("", ""), ("127.0.0.1:5000", '"127.0.0.1:5000"'),
     ('ua "q" \\x', '"ua \\"q\\" \\\\x"'), ("a\nb", '"a\\nb"'), (200, "200"), (True, "true")],
)
def test_text_values_are_quoted_as_logrus_quotes(value: Any, text: str) -> None:
    """logrus's needsQuoting: anything beyond [A-Za-z0-9-._/@^+] is quoted; a newline never
    ends a line."""
    assert logs._text_value(value) == text


def test_request_id_adopts_a_plain_incoming_one_and_replaces_anything_else() -> None:
    class Req:
        def __init__(self, rid: str) -> None:
            self.headers = {"x-request-id": rid}

    for incoming, adopted in (("proxy-1234:abc", True), ("a" * 128, True), ("a" * 129, False),
                              ('x" evil=1', False), ("x\ny", False), ("", False)):
        rl = logs.begin_request(Req(incoming), {})
        try:
            assert (rl.id == incoming) is adopted, incoming
            assert logs.current_request() is rl
        finally:
            logs.end_request(rl)
        assert logs.current_request() is None


def test_text_formatter_memory_stays_bounded_against_distinct_huge_header_values() -> None:
    """A hostile client sends thousands of requests, each with a different Host and
    X-Forwarded-For near the 64 KiB head limit: the formatter's memory of quoted values
    must stay small (it was 4096 entries of whatever size: hundreds of MiB), and each
    line stays bounded."""

    class Req:
        method = "GET"
        path = "/v2/"
        user = None

        def __init__(self, i: int) -> None:
            self.params: dict[str, str] = {}
            host = f"h{i}-" + "x" * 30_000
            self.headers = {"host": host, "x-forwarded-for": f"::1%{i}" + "z" * 30_000}

    formatter = logs.LogrusFormatter()
    for i in range(300):
        rl = logs.RequestLog(str(i), Req(i), {"client": ("127.0.0.1", 1)})
        record = logging.LogRecord("registry", logging.INFO, __file__, 1, "m", None, None)
        record.request = rl
        line = formatter.format(record)
        assert len(line) < 8 * logs.MAX_FIELD_CHARS
    cached = sum(len(k) + len(v) for k, v in formatter._quoted.items())
    assert cached < 256 * 1024
