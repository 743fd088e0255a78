"""The ``redis:`` section as registry:3 v3.0.0 reads it (issue 17 item 1): go-redis's
UniversalOptions key names, Go duration strings, go-redis's defaults, both env spellings,
and one clear line for what we refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.config import ConfigError, load_config

V = "version: 0.1\nstorage: inmemory\n"


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None):
    path = tmp_path / "config.yml"
    path.write_text(V + text)
    config, _ = load_config(str(path), environ or {})
    return config


def refused(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_v3_documented_example_loads_with_its_values(tmp_path):
    # registry:3's configuration.md example (TLS aside: its files must exist to connect).
    config = load(tmp_path, (
        "redis:\n  addrs: [localhost:6379]\n  password: asecret\n  db: 3\n"
        "  dialtimeout: 10ms\n  readtimeout: 20ms\n  writetimeout: 30ms\n"
        "  maxidleconns: 16\n  poolsize: 64\n  connmaxidletime: 300s\n"
        "  username: u\n  clientname: reg\n  pooltimeout: 2s\n  tls:\n    enabled: false\n"
    ))
    r = config.redis
    assert (r.host, r.port, r.password, r.username, r.db, r.clientname) == (
        "localhost", 6379, "asecret", "u", 3, "reg")
    assert (r.dialtimeout, r.readtimeout, r.writetimeout, r.pooltimeout) == (0.01, 0.02, 0.03, 2.0)
    assert (r.maxidleconns, r.poolsize, r.connmaxidletime) == (16, 64, 300.0)
    assert r.tls_certificate is None


def test_go_redis_defaults_fill_what_is_unset(tmp_path):
    r = load(tmp_path, "redis:\n  addrs: ['127.0.0.1:7000']\n").redis
    assert (r.dialtimeout, r.readtimeout, r.writetimeout, r.pooltimeout) == (5.0, 3.0, 3.0, 4.0)
    assert (r.maxretries, r.minretrybackoff, r.maxretrybackoff) == (3, 0.008, 0.512)
    assert r.connmaxidletime == 1800.0 and r.poolsize >= 10 and r.db == 0


def test_negative_timeout_means_none_and_zero_means_default(tmp_path):
    r = load(tmp_path, "redis:\n  addrs: [r:1]\n  readtimeout: -1ns\n  dialtimeout: '0'\n").redis
    assert r.readtimeout is None and r.dialtimeout == 5.0 and r.pooltimeout == 30.0


@pytest.mark.parametrize("environ", [
    {"REGISTRY_REDIS_ADDRS": "[redis:6380]", "REGISTRY_REDIS_DB": "2"},  # v3.1's spelling
    {"REGISTRY_REDIS_OPTIONS_ADDRS": "[redis:6380]", "REGISTRY_REDIS_OPTIONS_DB": "2"},  # v3.0.0's
], ids=["redis-addrs", "redis-options-addrs"])
def test_env_overrides_in_both_registry3_spellings(tmp_path, environ):
    r = load(tmp_path, "", environ).redis
    assert (r.host, r.port, r.db) == ("redis", 6380, 2)


def test_no_addrs_means_no_redis(tmp_path):
    assert load(tmp_path, "redis:\n  password: x\n").redis is None
    assert load(tmp_path, "").redis is None


def test_blobdescriptor_redis_needs_the_redis_section(tmp_path):
    assert refused(tmp_path, "", {"REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis"}) == (
        "storage.cache.blobdescriptor: redis needs the redis section: set redis.addrs"
        " (REGISTRY_REDIS_ADDRS=[host:6379])")
    config = load(tmp_path, "redis: {addrs: ['r:1']}\n",
                  {"REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "Redis"})
    assert config.storage.blobdescriptor == "redis"


@pytest.mark.parametrize(("text", "message"), [
    ("redis:\n  addrs: [a:1, b:2]\n",
     ("redis.addrs: 2 addresses would make registry:3 a Redis Cluster client, which is not"
     " supported; give the one address of a standalone Redis")),
    ("redis:\n  addrs: [nohost]\n", "redis.addrs: expected host:port, got 'nohost'"),
    ("redis:\n  addrs: [r:1]\n  dialtimeout: 5\n",
     ("redis.dialtimeout: expected a duration string such as 5s or 100ms (registry:3 refuses a"
     " bare number here), got 5")),
    ("redis:\n  addrs: [r:1]\n  readtimeout: soon\n",
     "redis.readtimeout: invalid duration 'soon' (expected e.g. 168h, 10m30s or 500ms)"),
    ("redis:\n  addrs: [r:1]\n  poolsize: many\n",
     "redis.poolsize: expected an integer, got 'many'"),
    ("redis:\n  addrs: [r:1]\n  protocol: 4\n", "redis.protocol: expected 2 or 3, got 4"),
    ("redis:\n  addrs: [r:1]\n  tls:\n    certificate: /c.pem\n",
     "redis.tls: certificate and key must be given together"),
    ("redis:\n  addrs: [r:1]\n  minidleconns: 4\n",
     "redis.minidleconns: not supported: connections are opened on demand; remove minidleconns"),
    ("redis:\n  addrs: [r:1]\n  unstableresp3: true\n",
     "redis.unstableresp3: True is not supported: only false"),
], ids=["cluster", "no-port", "bare-number-duration", "bad-duration", "bad-int", "protocol",
        "cert-without-key", "minidleconns", "resp3"])
def test_bad_redis_values_stop_startup_with_one_line(tmp_path, text, message):
    assert refused(tmp_path, text) == message


def test_unknown_redis_key_is_a_warning(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(V + "redis:\n  addrs: [r:1]\n  poolsiz: 3\n")
    _, warnings = load_config(str(path), {})
    assert "unknown configuration key: redis.poolsiz" in warnings


def test_unreadable_redis_tls_files_stop_startup(tmp_path):
    from registry.server import _check_startup

    path = tmp_path / "config.yml"
    path.write_text(V + f"redis:\n  addrs: [r:1]\n  tls:\n    certificate: {tmp_path}/no.pem\n"
                    f"    key: {tmp_path}/no.key\n")
    config, _ = load_config(str(path), {})
    with pytest.raises(ConfigError, match=r"^redis\.tls: cannot load the certificate"):
        _check_startup(config)


def test_blobdescriptorsize_with_redis_is_a_warning(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(V + "redis: {addrs: ['r:1']}\n")
    _, warnings = load_config(str(path), {"REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis",
                                          "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTORSIZE": "5"})
    assert ("storage.cache.blobdescriptorsize: not used with the redis cache"
            " (registry:3 warns the same)") in warnings
