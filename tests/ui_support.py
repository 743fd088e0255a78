"""Helpers for the web UI's browser tests (tests/test_ui_browser.py).

Contracts:
- `open_browser()` starts Debian's chromium, headless, through Debian's chromedriver
  (`/usr/bin/chromedriver`, the same version as the browser), driven by Selenium from PyPI.
  Selenium is given both paths, so Selenium Manager never runs and nothing is downloaded.
  Missing chromium or chromedriver: the test fails under CI=true, else it is skipped
  (e2e_support.require_tool). The browser is quit when the context ends, whatever happens.
- `Page` wraps a driver with waits bounded by `WAIT_S` (a page that never shows the text
  fails the test with what the page did show), screenshots, the console and CDP emulation.
- Screenshots go to `$UI_SCREENSHOTS`, else `<checkout>/ui-screenshots/` (in .gitignore).
- `push_content(client)` pushes, over the v2 API with httpx, everything the pages must show:
  an image with history and hostile annotations, a two-platform index, an artifact whose
  subject is the image, and a second tag that the delete test may remove.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
WAIT_S = 20.0  # a page's API calls on 2 shared cores: seconds at worst, never this
POLL_S = 0.1
DRIVER_START_TIMEOUT_S = 60.0
SCREENSHOTS = Path(os.environ.get("UI_SCREENSHOTS") or e2e.REPO_ROOT / "ui-screenshots")

# Text the pages must show as text: markup, quotes and a would-be event handler.
HOSTILE = "<img src=x onerror=\"window.__pwned=1\">'\"&amp;</title><script>window.__pwned=2</script>"


# --------------------------------------------------------------------------- the browser


@contextlib.contextmanager
def open_browser(width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A headless chromium driven through chromedriver; quit at the end."""
    chromium = e2e.require_tool(CHROMIUM, "apt-get install chromium")
    chromedriver = e2e.require_tool(CHROMEDRIVER, "apt-get install chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        msg = "selenium is not installed; pip install -e '.[test]'"
        if e2e.in_ci():
            pytest.fail(f"CI=true but {msg}")
        pytest.skip(msg)
    options = webdriver.ChromeOptions()
    # Debian's /usr/bin/chromium is a shell wrapper; the driver needs to run it as the browser.
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container: the sandbox needs user namespaces
        "--disable-gpu",
        "--disable-dev-shm-usage",  # /dev/shm is small in containers
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",  # no update or safe-browsing calls: offline
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(DRIVER_START_TIMEOUT_S)
        driver.set_script_timeout(WAIT_S)
        yield Page(driver)
    finally:
        driver.quit()


class Page:
    """A browser tab with bounded waits. `base` is the registry's http://host:port."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.base = ""

    # navigation ---------------------------------------------------------------------------

    def open(self, path: str) -> None:
        """Load ``base + path`` as a new document (as typing the URL would)."""
        self.driver.get(self.base + path)

    def path(self) -> str:
        return str(self.driver.execute_script("return location.pathname + location.search"))

    def back(self) -> None:
        self.driver.back()

    # reading ------------------------------------------------------------------------------

    def main_text(self) -> str:
        return str(self.driver.execute_script(
            "const m = document.getElementById('main'); return m ? m.innerText : '';"))

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        """Poll ``check`` until it returns something truthy; fail with the page's text."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except Exception as exc:  # noqa: BLE001 - a stale element is a retry, as is any other
                last = exc
            else:
                if last:
                    return last
            time.sleep(POLL_S)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what} (last: {last!r}) on {self.path()}; "
            f"the page shows:\n{self.main_text()[:3000]}"
        )

    def wait_text(self, *texts: str, timeout: float = WAIT_S) -> str:
        """Wait until #main's text contains every one of ``texts`` and no page is loading."""
        def check() -> str | None:
            busy = self.driver.execute_script(
                "return document.getElementById('main')?.getAttribute('aria-busy')")
            text = self.main_text()
            return text if busy != "true" and all(t in text for t in texts) else None
        return str(self.wait_for(f"text {texts!r}", check, timeout))

    def wait_status(self, text: str, timeout: float = WAIT_S) -> str:
        """Wait until the status line (the polite live region under the page) says ``text``."""
        def check() -> str | None:
            status = str(self.js("return document.getElementById('status').textContent"))
            return status if text in status else None
        return str(self.wait_for(f"status {text!r}", check, timeout))

    def wait_gone(self, text: str, timeout: float = WAIT_S) -> None:
        self.wait_for(f"{text!r} to disappear", lambda: text not in self.main_text(), timeout)

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By
        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def one(self, selector: str) -> Any:
        return self.wait_for(f"element {selector!r}", lambda: (self.css(selector) or [None])[0])

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def console(self) -> list[dict[str, Any]]:
        """Console entries since the last call (chromedriver drains the log on read)."""
        return list(self.driver.get_log("browser"))

    # emulation ----------------------------------------------------------------------------

    def cdp(self, cmd: str, params: dict[str, Any] | None = None) -> Any:
        return self.driver.execute_cdp_cmd(cmd, params or {})

    def color_scheme(self, scheme: str | None) -> None:
        """Emulate prefers-color-scheme (``None``: the browser's own again)."""
        features = [{"name": "prefers-color-scheme", "value": scheme}] if scheme else []
        self.cdp("Emulation.setEmulatedMedia", {"features": features})

    def viewport(self, width: int | None, height: int = 800) -> None:
        """Emulate a phone-sized viewport (``None``: the window's own again)."""
        if width is None:
            self.cdp("Emulation.clearDeviceMetricsOverride")
        else:
            self.cdp("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True})

    def basic_auth(self, user: str, password: str) -> None:
        """Send Basic credentials on every request, as a browser does after its prompt."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.cdp("Network.enable")
        self.cdp("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


# --------------------------------------------------------------------------- content


@dataclasses.dataclass
class Content:
    """What push_content pushed: names, tags and digests the tests look for."""

    image_repo: str
    image_tag: str
    image_digest: str
    spare_tag: str  # a second tag on its own manifest, for the delete test
    spare_digest: str
    index_repo: str
    index_tag: str
    index_digest: str
    child_digests: list[str]
    artifact_digest: str
    artifact_type: str
    history_command: str
    layer_digests: list[str]


def _put_manifest(client: httpx.Client, repo: str, ref: str, body: bytes, media_type: str) -> str:
    r = client.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type})
    assert r.status_code == 201, (r.status_code, r.text)
    digest = e2e.sha256_digest(body)
    assert r.headers["Docker-Content-Digest"] == digest
    return digest


def _image(client: httpx.Client, repo: str, *, arch: str, command: str, files: dict[str, bytes],
           annotations: dict[str, str] | None = None) -> tuple[bytes, list[str]]:
    """Push an OCI image's blobs (config with history); return (manifest bytes, layer digests)."""
    layer, diff_id = e2e.make_layer(files)
    config = e2e.canonical_json({
        "architecture": arch,
        "os": "linux",
        "created": "2026-01-02T03:04:05Z",
        "config": {"Cmd": ["/bin/sh"], "Labels": {"note": HOSTILE}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [
            {"created": "2026-01-02T03:04:05Z", "created_by": command},
            {"created": "2026-01-02T03:04:06Z", "created_by": 'CMD ["/bin/sh"]',
             "empty_layer": True, "comment": HOSTILE},
        ],
    })
    e2e.push_blob(client, repo, config)
    layer_digest = e2e.push_blob(client, repo, layer)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": e2e.MEDIA_OCI_MANIFEST,
        "config": e2e.descriptor(e2e.MEDIA_OCI_CONFIG, config),
        "layers": [e2e.descriptor(e2e.MEDIA_OCI_LAYER_GZIP, layer,
                                  annotations={"org.opencontainers.image.title": "root.tar.gz"})],
    }
    if annotations:
        manifest["annotations"] = annotations
    return e2e.canonical_json(manifest), [layer_digest]


def push_content(client: httpx.Client, prefix: str = "demo") -> Content:
    """Push the pages' content into repositories under ``prefix``/ (see the module doc)."""
    image_repo, index_repo = f"{prefix}/app", f"{prefix}/multi"
    command = "RUN /bin/sh -c echo built-by-the-ui-test > /hello"
    body, layers = _image(client, image_repo, arch="amd64", command=command,
                          files={"hello": b"hello from the ui test\n"},
                          annotations={"org.example.note": HOSTILE,
                                       "org.opencontainers.image.description": "quote's \"test\""})
    image_digest = _put_manifest(client, image_repo, "v1", body, e2e.MEDIA_OCI_MANIFEST)
    spare, _ = _image(client, image_repo, arch="amd64", command="RUN spare",
                      files={"spare": b"spare layer\n"})
    spare_digest = _put_manifest(client, image_repo, "to-delete", spare, e2e.MEDIA_OCI_MANIFEST)

    children = []
    for arch in ("amd64", "arm64"):
        child, _ = _image(client, index_repo, arch=arch, command=f"RUN build-{arch}",
                          files={"arch": arch.encode()})
        digest = _put_manifest(client, index_repo, e2e.sha256_digest(child), child,
                               e2e.MEDIA_OCI_MANIFEST)
        children.append((digest, child, arch))
    index = e2e.canonical_json({
        "schemaVersion": 2,
        "mediaType": e2e.MEDIA_OCI_INDEX,
        "manifests": [
            {"mediaType": e2e.MEDIA_OCI_MANIFEST, "digest": d, "size": len(b),
             "platform": {"os": "linux", "architecture": a}}
            for d, b, a in children
        ],
    })
    index_digest = _put_manifest(client, index_repo, "latest", index, e2e.MEDIA_OCI_INDEX)

    artifact_type = "application/spdx+json"
    sbom = b'{"spdxVersion":"SPDX-2.3","name":"ui-test"}'
    empty = b"{}"
    e2e.push_blob(client, image_repo, empty)
    e2e.push_blob(client, image_repo, sbom)
    artifact = e2e.canonical_json({
        "schemaVersion": 2,
        "mediaType": e2e.MEDIA_OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": e2e.descriptor(e2e.MEDIA_OCI_EMPTY, empty),
        "layers": [e2e.descriptor(artifact_type, sbom)],
        "subject": {"mediaType": e2e.MEDIA_OCI_MANIFEST, "digest": image_digest,
                    "size": len(body)},
        "annotations": {"org.example.sbom-note": HOSTILE},
    })
    artifact_digest = _put_manifest(client, image_repo, e2e.sha256_digest(artifact), artifact,
                                    e2e.MEDIA_OCI_MANIFEST)
    return Content(
        image_repo=image_repo, image_tag="v1", image_digest=image_digest,
        spare_tag="to-delete", spare_digest=spare_digest,
        index_repo=index_repo, index_tag="latest", index_digest=index_digest,
        child_digests=[d for d, _, _ in children],
        artifact_digest=artifact_digest, artifact_type=artifact_type,
        history_command=command, layer_digests=layers,
    )


def short(digest: str) -> str:
    """A digest as the pages show it in lists: the algorithm and 12 hex digits."""
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}"


def api_json(client: httpx.Client, path: str) -> Any:
    r = client.get(path)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return json.loads(r.text)
