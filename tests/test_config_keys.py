"""Every registry:3 configuration key is implemented or refused (issue 15, item 1): the one
table (registry/config/keys.py), the start-up refusals it drives, the README table it
generates, and the keys it says we implement (catalog.maxentries, storage.cache,
storage: inmemory with one worker, version)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import serve_asgi, start_app
from oci import OCI_INDEX, OCI_MANIFEST, error_codes, push_image

from registry.config import ConfigError, load_config
from registry.config.keys import KEYS, OURS, REFUSED, SUPPORTED, markdown_table, refusals
from registry.config.schema import SCHEMA, unknown_keys
from registry.drivers.filesystem import FilesystemDriver
from registry.http.app import RegistryApp
from registry.http.request import AppOptions
from registry.storage.store import Storage

V = "version: 0.1\nstorage: inmemory\n"
README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config-keys:start -->\n", "<!-- config-keys:end -->"


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Any:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return load_config(str(path), environ or {})


def refused(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the README table ------------------------------------------------------------------------


def test_readme_table_is_the_key_table():
    # The README's table is generated from KEYS (keys.markdown_table()): a key added,
    # dropped or re-classified in one place and not the other fails here.
    text = README.read_text()
    assert START in text and END in text
    assert text.split(START, 1)[1].split(END, 1)[0] == markdown_table()


def test_table_is_one_row_per_key_with_a_known_status():
    names = [k.key for k in KEYS]
    assert len(names) == len(set(names))
    assert {k.status for k in KEYS} <= {SUPPORTED, REFUSED, OURS}
    assert all(k.note for k in KEYS if k.status == REFUSED or k.allowed is not None)


@pytest.mark.parametrize("entry", [k for k in KEYS if k.status != REFUSED], ids=lambda k: k.key)
def test_every_accepted_key_is_known_to_the_unknown_key_check(entry):
    # A key we accept never draws "unknown configuration key" (the schema is the table).
    tree: dict[str, Any] = {}
    node = tree
    head, _, tail = entry.key.partition("[]")
    parts = head.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = [{tail.strip(".") or "x": 1}] if tail else "x"
    assert list(unknown_keys(tree, SCHEMA, "")) == []


# --- refused keys: one line that names the key and says what to do ---------------------------

REFUSED_CASES = [
    ("proxy-exec", "proxy:\n  remoteurl: https://registry-1.docker.io\n  exec: {command: x}\n",
     {}, ("proxy.exec: not supported: credential helpers are not supported; set proxy.username"
     " and proxy.password")),
    ("redis-v2-addr", "redis:\n  addr: localhost:6379\n", {},
     "redis.addr: not supported: registry:2's key: registry:3 reads addrs: [host:port]"),
    ("redis-v2-pool", "", {"REGISTRY_REDIS_POOL_MAXIDLE": "16"},
     ("redis.pool: not supported: registry:2's pool section: use poolsize, maxidleconns,"
      " connmaxidletime")),
    ("redis-sentinel", "redis:\n  addrs: [s:26379]\n  mastername: m\n", {},
     ("redis.mastername: not supported: Redis Sentinel is not supported; give redis.addrs the"
      " master's address")),
    ("redis-cluster-option", "", {"REGISTRY_REDIS_ADDRS": "[r:6379]",
                                  "REGISTRY_REDIS_ROUTERANDOMLY": "true"},
     ("redis.routerandomly: not supported: Redis Cluster is not supported; give redis.addrs"
      " the one address of a standalone Redis")),
    ("redis-tls-enabled", "redis:\n  addrs: [r:6379]\n  tls:\n    enabled: true\n", {},
     ("redis.tls.enabled: True is not supported: only false: TLS is on when certificate and"
      " key are set")),
    ("letsencrypt", "http:\n  tls:\n    letsencrypt:\n      cachefile: /c\n      email: a@b.c\n",
     {}, ("http.tls.letsencrypt: not supported: Let's Encrypt needs the network; terminate TLS"
     " at traefik or set http.tls.certificate and http.tls.key")),
    ("middleware", "middleware:\n  storage:\n    - name: cloudfront\n", {},
     ("middleware: not supported: middleware (cloudfront, redirect, ...) is not supported;"
     " remove the middleware section (storage.s3.redirectendpoint sets the redirect host)")),
    ("log-hooks", "log:\n  hooks:\n    - type: mail\n", {},
     ("log.hooks: not supported: log hooks (mail) are not supported; remove log.hooks and"
     " alert from your log pipeline")),
    ("log-reportcaller", "log:\n  reportcaller: true\n", {},
     "log.reportcaller: True is not supported: only false: remove it or set it to false"),
    ("autoredirect", "", {"REGISTRY_AUTH_TOKEN_AUTOREDIRECT": "true"},
     ("auth.token.autoredirect: True is not supported: only false: set auth.token.realm to the"
     " token server's URL")),
    ("includereferences", "notifications:\n  events:\n    includereferences: true\n", {},
     ("notifications.events.includereferences: True is not supported: only false: manifest"
     " references are not listed in events")),
    ("http-net-unix", "http:\n  net: unix\n  addr: /run/registry.sock\n", {},
     ("http.net: 'unix' is not supported: only tcp: unix sockets are not supported; listen on"
     " a TCP address")),
    ("azure", "", {"REGISTRY_STORAGE": "azure"},
     "storage.azure: not supported: use the filesystem or s3 driver"),
    ("gcs", "", {"REGISTRY_STORAGE": "gcs", "REGISTRY_STORAGE_GCS_BUCKET": "b"},
     "storage.gcs: not supported: use the filesystem or s3 driver"),
    ("s3-accelerate", "", {"REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_ACCELERATE": "true"},
     ("storage.s3.accelerate: True is not supported: only false: transfer acceleration is not"
     " supported; use regionendpoint")),
    ("s3-useragent", "", {"REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_USERAGENT": "me"},
     "storage.s3.useragent: not supported: a custom S3 User-Agent is not supported; remove it"),
    ("s3-loglevel", "", {"REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_LOGLEVEL": "debug"},
     ("storage.s3.loglevel: 'debug' is not supported: only off: S3 requests are logged at"
     " log.level debug")),
    ("policy-classes", "policy:\n  repository:\n    classes: [image]\n", {},
     ("policy.repository.classes: not supported: repository classes are not supported; remove"
     " them (policy.access restricts who may push)")),
    ("two-refused", "middleware: {storage: [x]}\nredis: {addr: 'r:6379'}\n", {},
     ("middleware: not supported: middleware (cloudfront, redirect, ...) is not supported;"
     " remove the middleware section (storage.s3.redirectendpoint sets the redirect host)"
     " (and 1 more refused key(s))")),
]


@pytest.mark.parametrize(("text", "environ", "message"), [c[1:] for c in REFUSED_CASES],
                         ids=[c[0] for c in REFUSED_CASES])
def test_refused_key_stops_startup_naming_it(tmp_path, text, environ, message):
    assert refused(tmp_path, V + text, environ) == message


@pytest.mark.parametrize("entry", [k for k in KEYS if k.status == REFUSED], ids=lambda k: k.key)
def test_every_refused_key_in_the_table_is_refused_when_set(entry):
    # Whatever a refused key holds, setting it refuses start-up with its name first.
    tree: dict[str, Any] = {"version": "0.1"}
    node = tree
    parts = entry.key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = {"anything": 1}
    found = refusals(tree)
    assert found and found[0].startswith(f"{entry.key}: not supported: {entry.note}")


@pytest.mark.parametrize(
    "text",
    [
        "proxy:\nredis: {}\nmiddleware: {}\n",  # empty sections are not set
        "http:\n  net: tcp\n",
        "notifications:\n  events:\n    includereferences: false\n",
        "log:\n  reportcaller: false\n",
        ("auth:\n  token:\n    autoredirect: false\n    realm: https://auth/token\n"
        "    service: s\n    issuer: i\n    rootcertbundle: /b.pem\n"),
        "storage:\n  inmemory:\n  cache:\n    blobdescriptor: InMemory\n",
    ],
    ids=["empty-sections", "net-tcp", "includereferences-false", "reportcaller-false",
         "autoredirect-false", "blobdescriptor-inmemory"],
)
def test_allowed_values_of_partly_supported_keys_load(tmp_path, text):
    load(tmp_path, "version: 0.1\n" + ("" if text.startswith("storage") else "storage: inmemory\n")
         + text)


def test_version_other_than_0_1_is_refused(tmp_path):
    assert refused(tmp_path, "version: 0.2\nstorage: inmemory\n") == (
        "version: unsupported configuration version '0.2' (expected 0.1)"
    )


# --- implemented keys ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("", 1000), ("catalog:\n  maxentries: 50\n", 50), ("catalog:\n  maxentries: 0\n", 1000),
    ("catalog:\n  maxentries: -5\n", 1000),
], ids=["default", "set", "zero-is-default", "negative-is-default"])
def test_catalog_maxentries_as_the_reference(tmp_path, text, expected):
    config, _ = load(tmp_path, V + text)
    assert config.catalog_maxentries == expected


def test_catalog_maxentries_must_be_an_integer(tmp_path):
    assert refused(tmp_path, V + "catalog:\n  maxentries: many\n") == (
        "catalog.maxentries: expected an integer, got 'many'"
    )


@pytest.mark.parametrize(("text", "kind", "size"), [
    ("", None, 10_000),
    ("  cache:\n    blobdescriptor: inmemory\n", "inmemory", 10_000),
    ("  cache:\n    layerinfo: inmemory\n    blobdescriptorsize: 5\n", "inmemory", 5),
    ("  cache:\n    blobdescriptor: inmemory\n    blobdescriptorsize: 0\n", "inmemory", 0),
], ids=["none", "inmemory", "layerinfo-and-size", "unbounded"])
def test_storage_cache_blobdescriptor(tmp_path, text, kind, size):
    config, _ = load(tmp_path, "version: 0.1\nstorage:\n  inmemory:\n" + text)
    assert (config.storage.blobdescriptor, config.storage.blobdescriptorsize) == (kind, size)


@pytest.mark.parametrize("workers", [None, "0", "2"])
def test_inmemory_storage_serves_with_one_worker_and_says_so(tmp_path, workers):
    environ = {"REGISTRY_HTTP_WORKERS": workers} if workers is not None else {}
    config, warnings = load(tmp_path, V, environ)
    assert config.http.workers == 1
    assert [w for w in warnings if w.startswith("storage.inmemory:")] == [
        ("storage.inmemory: each worker process would have its own store; serving with one"
        " worker (http.workers: 1)")
    ]


def test_inmemory_with_one_worker_is_quiet(tmp_path):
    config, warnings = load(tmp_path, V, {"REGISTRY_HTTP_WORKERS": "1"})
    assert config.http.workers == 1 and warnings == []


def test_filesystem_worker_count_is_left_alone(tmp_path):
    config, warnings = load(tmp_path, "version: 0.1\nstorage: {filesystem: {}}\n",
                            {"REGISTRY_HTTP_WORKERS": "2"})
    assert config.http.workers == 2 and warnings == []


def test_table_keys_are_dotted_lowercase_paths():
    assert all(re.fullmatch(r"[a-z0-9]+(\.[a-z0-9]+|\[\]\.[a-z0-9]+)*", k.key) for k in KEYS)


async def test_catalog_pages_are_capped_by_maxentries_discovery_23(nursery, tmp_path):
    # As the reference's catalog handler: n above catalog.maxentries is 400
    # PAGINATION_NUMBER_INVALID; without n a page holds at most maxentries, with a Link.
    url, _ = await start_app(nursery, str(tmp_path / "s"), AppOptions(catalog_max_entries=2))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for name in ("c", "a", "b"):
            await push_image(client, name, "v1")
        r = await client.get("/v2/_catalog")
        assert r.json() == {"repositories": ["a", "b"]}
        assert r.headers["link"] == '</v2/_catalog?last=b&n=2>; rel="next"'
        r = await client.get("/v2/_catalog", params={"n": 2, "last": "b"})
        assert r.json() == {"repositories": ["c"]} and "link" not in r.headers
        r = await client.get("/v2/_catalog", params={"n": 3})
        assert r.status_code == 400 and error_codes(r) == ["PAGINATION_NUMBER_INVALID"]


@pytest.mark.parametrize(("value", "expected"), [("0", 100), ("8", 8)])
def test_tag_concurrencylimit_zero_means_the_default_as_the_reference(tmp_path, value, expected):
    config, _ = load(tmp_path, V, {"REGISTRY_STORAGE_TAG_CONCURRENCYLIMIT": value})
    assert config.storage.tag_concurrencylimit == expected


def test_index_platformlist_is_read(tmp_path):
    config, _ = load(tmp_path, V + "validation:\n  manifests:\n    indexes:\n      platforms: List\n"
                     "      platformlist:\n        - {architecture: amd64, os: linux}\n")
    assert config.validation.indexes_platforms == "list"
    assert config.validation.indexes_platformlist == (("amd64", "linux"),)


def test_index_platformlist_entries_need_architecture_and_os(tmp_path):
    assert refused(tmp_path, V + "validation:\n  manifests:\n    indexes:\n      platformlist:\n"
                   "        - {os: linux}\n") == (
        "validation.manifests.indexes.platformlist.0: needs both architecture and os"
    )


@pytest.mark.parametrize(("children", "platforms", "status"), [
    ("all", (), 400), ("none", (), 201),
    ("list", (("amd64", "linux"),), 400), ("list", (("arm64", "linux"),), 201),
    ("list", (), 400),
], ids=["all", "none", "list-names-the-missing-one", "list-names-another", "empty-list-is-all"])
async def test_index_children_that_must_exist_follow_validation_manifests_indexes(
    nursery, tmp_path, children, platforms, status
):
    # An index whose amd64/linux child was never pushed: refused (400 MANIFEST_BLOB_UNKNOWN)
    # only when the configuration says that child must exist, as the reference.
    storage = Storage(FilesystemDriver(str(tmp_path / "s")), index_children=children,
                      index_platforms=platforms)
    url = await serve_asgi(nursery, RegistryApp(storage, AppOptions()))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 100,
         "platform": {"architecture": "amd64", "os": "linux"}},
    ]}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.put("/v2/idx/manifests/v1", content=json.dumps(index).encode(),
                             headers={"Content-Type": OCI_INDEX})
    assert r.status_code == status, r.text
    if status == 400:
        assert error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]
