"""The pull-through cache's configuration (issue 16 item 1): registry:3's ``proxy`` section
with its env variables and ttl rules, our ``proxies`` list, and one clear line for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.config import ConfigError, load_config
from registry.config.model import DEFAULT_PROXY_TTL

V = "version: 0.1\nstorage: inmemory\n"


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yml"
    path.write_text(V + text)
    return load_config(str(path), environ or {})[0]


def test_proxy_section_is_the_catch_all_remote_with_v3_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "proxy:\n  remoteurl: https://registry-1.docker.io/\n")
    (remote,) = config.proxies
    assert (remote.prefix, remote.remoteurl, remote.ttl) == ("", "https://registry-1.docker.io",
                                                              DEFAULT_PROXY_TTL)
    assert DEFAULT_PROXY_TTL == 168 * 3600
    assert remote.username is None and remote.password is None


def test_proxy_env_variables_as_registry3(tmp_path: Path) -> None:
    env = {"REGISTRY_PROXY_REMOTEURL": "http://127.0.0.1:5001", "REGISTRY_PROXY_USERNAME": "u",
           "REGISTRY_PROXY_PASSWORD": "s3cret", "REGISTRY_PROXY_TTL": "90m"}
    (remote,) = load(tmp_path, "", env).proxies
    assert (remote.remoteurl, remote.username, remote.password, remote.ttl) == (
        "http://127.0.0.1:5001", "u", "s3cret", 5400.0)
    assert "s3cret" not in repr(remote)


@pytest.mark.parametrize("ttl", ["0", "0s", "-1h"])
def test_zero_or_negative_ttl_never_expires_as_v3(tmp_path: Path, ttl: str) -> None:
    (remote,) = load(tmp_path, f"proxy:\n  remoteurl: https://r.example\n  ttl: {ttl}\n").proxies
    assert remote.ttl is None


def test_no_remoteurl_is_no_proxy(tmp_path: Path) -> None:
    assert load(tmp_path, "proxy:\n  username: u\n").proxies == ()


def test_proxies_list_longest_prefix_first(tmp_path: Path) -> None:
    config = load(tmp_path, (
        "proxies:\n"
        "  - {prefix: ghcr, remoteurl: 'https://ghcr.io'}\n"
        "  - {prefix: mirrors/quay, remoteurl: 'https://quay.io', ttl: 1h}\n"
        "  - {prefix: '', remoteurl: 'https://registry-1.docker.io'}\n"
    ))
    assert [(r.prefix, r.ttl) for r in config.proxies] == [
        ("mirrors/quay", 3600.0), ("ghcr", DEFAULT_PROXY_TTL), ("", DEFAULT_PROXY_TTL)]


@pytest.mark.parametrize(("text", "message"), [
    ("proxy:\n  remoteurl: ftp://x\n", "proxy.remoteurl: expected http(s)://host[:port]"),
    ("proxy:\n  remoteurl: 'https://'\n", "proxy.remoteurl: expected http(s)://host[:port]"),
    ("proxy:\n  remoteurl: 'http://h:99999'\n", "proxy.remoteurl: bad port"),
    ("proxy:\n  remoteurl: https://x\n  ttl: soon\n", "proxy.ttl: invalid duration 'soon'"),
    ("proxy:\n  remoteurl: https://x\n  username: u\n", "proxy.password: required with"),
    ("proxies:\n  - {prefix: a, remoteurl: 'https://x'}\n  - {prefix: a, remoteurl: 'https://y'}\n",
     "proxies.1.prefix: duplicate prefix a"),
    ("proxies:\n  - {prefix: a, remoteurl: 'https://x'}\n  - {prefix: a/b, remoteurl: 'https://y'}\n",
     "proxies.1.prefix: overlapping prefix a/b"),
    ("proxy: {remoteurl: 'https://x'}\nproxies:\n  - {prefix: '', remoteurl: 'https://y'}\n",
     "proxies.0.prefix: duplicate prefix '' (the catch-all)"),
    ("proxies:\n  - {prefix: 'Bad Prefix', remoteurl: 'https://x'}\n",
     "proxies.0.prefix: not a repository name prefix"),
    ("proxies:\n  - {prefix: a}\n", "proxies.0.remoteurl: required"),
    ("proxies: {prefix: a}\n", "proxies: expected a list of remotes"),
])
def test_bad_proxy_values_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_empty_credentials_from_compose_mean_anonymous(tmp_path: Path) -> None:
    # docker/docker-compose.mirror.yml passes REGISTRY_PROXY_USERNAME="" when unset.
    env = {"REGISTRY_PROXY_REMOTEURL": "https://registry-1.docker.io",
           "REGISTRY_PROXY_USERNAME": "", "REGISTRY_PROXY_PASSWORD": "", "REGISTRY_PROXY_TTL": "168h"}
    (remote,) = load(tmp_path, "", env).proxies
    assert remote.username is None and remote.password is None and remote.ttl == DEFAULT_PROXY_TTL
