"""The OCI distribution-spec conformance suites against `python -m registry serve` (issue 15,
item 4): v1.1.1's ginkgo suite and the spec's newer conformance program, both from
../shared/bin (see its README). Missing binaries skip locally and fail under CI=true."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from e2e_support import REPO_ROOT, _ours_command, _run_registry, in_ci, ours_log_problem, run

BIN = REPO_ROOT.parent / "shared" / "bin"
V1_1_1 = BIN / "oci-conformance-v1.1.1"
NEXT = BIN / "oci-conformance-next"
V1_1_1_TIMEOUT_S = 300  # a few seconds here
NEXT_TIMEOUT_S = 600  # a few seconds here
# The suites push layers with `urls` (non-distributable layers); registry:3 (and we, by
# default) refuse every URL until validation.manifests.urls.allow lists it.
ALLOW_URLS = "validation:\n  manifests:\n    urls:\n      allow: ['^https?://']\n"


def _binary(path: Path) -> str:
    if not path.is_file():
        reason = f"{path} is missing (see ../shared/bin/README.md)"
        if in_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return str(path)


def _ours_allowing_urls(config: Path) -> tuple[list[str], dict[str, str]]:
    config.write_text(config.read_text() + ALLOW_URLS)
    return _ours_command(config)


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # Go's S3 client
    env.update(extra)
    return env


def test_oci_conformance_v1_1_1_passes_every_spec(tmp_path: Path):
    exe = _binary(V1_1_1)
    with _run_registry("ours", tmp_path / "data", _ours_allowing_urls,
                       check_log=ours_log_problem) as reg:
        out = run([exe, "-ginkgo.no-color"], check=False, cwd=tmp_path, timeout=V1_1_1_TIMEOUT_S,
                  env=_env({
                      "OCI_ROOT_URL": reg.url, "OCI_NAMESPACE": "myorg/myrepo",
                      "OCI_CROSSMOUNT_NAMESPACE": "myorg/other", "OCI_TEST_PULL": "1",
                      "OCI_TEST_PUSH": "1", "OCI_TEST_CONTENT_DISCOVERY": "1",
                      "OCI_TEST_CONTENT_MANAGEMENT": "1", "OCI_DELETE_MANIFEST_BEFORE_BLOBS": "0",
                      "OCI_HIDE_SKIPPED_WORKFLOWS": "0", "OCI_REPORT_DIR": str(tmp_path),
                  }))
    summary = re.findall(r"\d+ Passed \| \d+ Failed \| \d+ Pending \| \d+ Skipped", out.stdout)
    assert summary and " 0 Failed " in summary[-1], out.stdout[-4000:]
    assert out.returncode == 0, out.stdout[-4000:]


def test_oci_conformance_next_passes_every_check(tmp_path: Path):
    exe = _binary(NEXT)
    with _run_registry("ours", tmp_path / "data", _ours_allowing_urls,
                       check_log=ours_log_problem) as reg:
        out = run([exe], check=False, cwd=tmp_path, timeout=NEXT_TIMEOUT_S, env=_env({
            "OCI_CONFIGURATION": "/dev/null", "OCI_REGISTRY": reg.host, "OCI_TLS": "disabled",
            "OCI_REPO1": "myorg/myrepo", "OCI_REPO2": "myorg/other", "OCI_API_PULL": "true",
            "OCI_API_PUSH": "true", "OCI_API_TAGS_LIST": "true", "OCI_API_REFERRER": "true",
            "OCI_API_TAGS_DELETE": "true", "OCI_API_MANIFESTS_DELETE": "true",
            "OCI_API_BLOBS_DELETE": "true", "OCI_RESULTS_DIR": str(tmp_path),
        }))
    text = out.stdout + out.stderr
    counts = dict(re.findall(r"^\s*(Pass|FAIL|Error)\.+:\s+(\d+)", text, re.MULTILINE))
    assert counts.get("Pass", "0") != "0", text[-4000:]
    assert (counts.get("FAIL"), counts.get("Error")) == ("0", "0"), text[-4000:]
