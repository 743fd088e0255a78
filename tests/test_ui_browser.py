"""The web UI in a real browser (issue 18): Debian's chromium, headless, driven by Selenium
through Debian's chromedriver, against our registry as a real process with content pushed
over the v2 API. Each test opens the pages the way a user does (a URL typed, a link
clicked, the back button) and checks what the page shows by its text; actions are checked
over the v2 API afterwards. Screenshots land in ui_support.SCREENSHOTS (out of git)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_auth_process import htpasswd_config, htpasswd_file, run_registry
from ui_support import HOSTILE, Content, Page, api_json, open_browser, push_content, short

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e
docker_cli = e2e.docker_cli  # the session fixture, for the docker push test

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HUMAN_SIZE = re.compile(r"\b\d+(\.\d)? (B|KiB|MiB|GiB)\b")


class Registry:
    def __init__(self, proc: Any, content: Content) -> None:
        self.proc = proc
        self.content = content
        self.host: str = proc.host
        self.url: str = proc.url


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Our registry as a process (deletes on, no auth), with ui_support.push_content's content."""
    tmp = tmp_path_factory.mktemp("ui")
    with run_registry(tmp) as proc, proc.client() as client:
        yield Registry(proc, push_content(client))


@pytest.fixture(scope="module")
def browser(registry: Registry) -> Iterator[Page]:
    with open_browser() as page:
        page.base = registry.url
        yield page


@pytest.fixture
def page(browser: Page) -> Iterator[Page]:
    """The module's browser, back to a desktop viewport and the light scheme after each test."""
    browser.console()  # drop what earlier tests logged
    try:
        yield browser
    finally:
        browser.viewport(None)
        browser.color_scheme(None)


def row_cells(page: Page, link_text: str) -> dict[str, str]:
    """The cells (data-label -> text) of the table row holding a link with ``link_text``."""
    return dict(page.js(
        "for (const a of document.querySelectorAll('#main tr a')) {"
        "  if (a.textContent === arguments[0]) return Object.fromEntries("
        "    [...a.closest('tr').cells].map((td) => [td.dataset.label, td.innerText])); }"
        "return {};", link_text) or {})


def row_cells_of(page: Page, selector: str) -> dict[str, str]:
    """The cells (data-label -> text) of the first row matching ``selector``."""
    return dict(page.js(
        "const tr = document.querySelector(arguments[0]); return tr ? Object.fromEntries("
        "  [...tr.cells].map((td) => [td.dataset.label, td.innerText])) : {};", selector) or {})


# --------------------------------------------------------------------------- pages


def test_catalog_lists_repositories_with_tags_last_push_and_size(
    page: Page, registry: Registry
) -> None:
    c = registry.content
    page.open("/ui/")
    page.wait_text("Repositories", c.image_repo, c.index_repo)
    app = page.wait_for("the app's row", lambda: row_cells(page, c.image_repo))
    assert app["Tags"] == "2", app  # v1 and to-delete
    assert app["Last push"].endswith("ago") or app["Last push"] == "just now", app
    assert HUMAN_SIZE.fullmatch(app["Size"]), app
    multi = row_cells(page, c.index_repo)
    assert multi["Tags"] == "1" and HUMAN_SIZE.fullmatch(multi["Size"]), multi
    page.screenshot("catalog")


def test_filter_as_you_type_asks_the_api_with_q(page: Page, registry: Registry) -> None:
    c = registry.content
    page.open("/ui/")
    page.wait_text(c.image_repo, c.index_repo)
    page.one("#filter").send_keys("mul")
    page.wait_gone(c.image_repo)
    page.wait_text(c.index_repo)
    assert page.path() == "/ui/?q=mul"
    page.open("/ui/?q=no-such-name")  # the filter is part of the URL: it opens directly
    page.wait_text("No repository name contains")
    assert page.one("#filter").get_attribute("value") == "no-such-name"


def test_catalog_pages_follow_next_and_the_back_button(page: Page, registry: Registry) -> None:
    c = registry.content
    first, second = sorted([c.image_repo, c.index_repo])
    page.open("/ui/?n=1")
    page.wait_text(first, "Next page")
    assert second not in page.main_text()
    page.one(".pager a").click()
    page.wait_text(second, "First page")
    assert page.path() == f"/ui/?last={first.replace('/', '%2F')}&n=1"
    assert first not in page.main_text()
    page.back()
    page.wait_text(first, "Next page")


def test_repository_page_shows_tags_sizes_platforms_and_pull_command(
    page: Page, registry: Registry
) -> None:
    c = registry.content
    page.open(f"/ui/repositories/{c.index_repo}")
    text = page.wait_text(c.index_repo, c.index_tag, short(c.index_digest))
    assert "linux/amd64" in text and "linux/arm64" in text
    assert HUMAN_SIZE.search(text), text
    pull = page.one("input.pull").get_attribute("value")
    assert pull == f"docker pull {registry.host}/{c.index_repo}:{c.index_tag}"
    page.screenshot("repository-index")

    page.open(f"/ui/repositories/{c.image_repo}")
    text = page.wait_text(c.image_tag, short(c.image_digest), c.spare_tag)
    row = row_cells(page, short(c.image_digest))
    assert row["Created"].endswith("ago"), row  # from the image config
    assert HUMAN_SIZE.search(row["Size"]), row
    page.screenshot("repository")


def test_copy_button_puts_the_pull_command_on_the_clipboard(page: Page, registry: Registry) -> None:
    c = registry.content
    page.cdp("Browser.grantPermissions", {
        "origin": registry.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    page.open(f"/ui/repositories/{c.index_repo}")
    page.wait_text(c.index_tag)
    page.one("button.copy").click()
    page.wait_status("Copied the pull command.")
    copied = page.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, (e) => done('error: ' + e));")
    assert copied == f"docker pull {registry.host}/{c.index_repo}:{c.index_tag}"


def test_manifest_page_shows_layers_history_annotations_and_referrers(
    page: Page, registry: Registry
) -> None:
    c = registry.content
    page.open(f"/ui/repositories/{c.image_repo}/manifests/{c.image_digest}")
    text = page.wait_text(c.image_digest, short(c.layer_digests[0]),
                          "application/vnd.oci.image.layer.v1.tar+gzip", c.history_command,
                          "org.example.note", "SBOMs (1)", short(c.artifact_digest), c.image_tag)
    assert "linux/amd64" in text
    assert 'quote\'s "test"' in text
    assert "root.tar.gz" in text  # a layer's annotation
    page.screenshot("manifest")


def test_index_page_lists_its_children_with_platforms(page: Page, registry: Registry) -> None:
    c = registry.content
    page.open(f"/ui/repositories/{c.index_repo}/manifests/{c.index_digest}")
    page.wait_text("Platforms", "linux/amd64", "linux/arm64",
                   *(short(d) for d in c.child_digests))
    page.screenshot("manifest-index")
    child = page.one(f"a[href$='/manifests/{c.child_digests[1]}']")
    child.click()
    page.wait_text(c.child_digests[1], "linux/arm64", "RUN build-arm64")


def test_artifact_page_links_its_subject(page: Page, registry: Registry) -> None:
    c = registry.content
    page.open(f"/ui/repositories/{c.image_repo}/manifests/{c.artifact_digest}")
    page.wait_text("Artifact", c.artifact_type, "Subject", short(c.image_digest))
    page.screenshot("artifact")
    page.one(".subject a").click()
    page.wait_text(c.image_digest, c.history_command)
    assert page.path() == f"/ui/repositories/{c.image_repo}/manifests/{c.image_digest}"


def test_registry_page_shows_storage_gc_and_version(page: Page, registry: Registry) -> None:
    with registry.proc.client() as client:
        info = api_json(client, "/ui/api/v1/info")
    page.open("/ui/registry")
    text = page.wait_text("Registry", "Version", str(info["version"]), "Storage used", "Blobs",
                          "Uploads in progress", "Garbage collection")
    assert info["storage"]["driver"] in text
    page.screenshot("registry")


def facts(page: Page) -> dict[str, str]:
    """The registry page's facts list (term -> text)."""
    return dict(page.js(
        "return [...document.querySelectorAll('#main dl.facts dt')].map("
        "  (dt) => [dt.innerText, dt.nextElementSibling ? dt.nextElementSibling.innerText : ''])"
    ) or [])


def test_registry_page_fills_in_the_storage_totals_once_computed(tmp_path: Path) -> None:
    """A fresh registry: the page's own /info starts the walk and answers null; the page
    says so (never 0) and shows the totals once the walk is done, without a reload."""
    with run_registry(tmp_path) as proc, open_browser() as page:
        with proc.client() as client:
            push_content(client)  # no /info yet: nothing walked the store
        page.base = proc.url
        page.open("/ui/registry")
        page.wait_text("Storage used", "Blobs")
        first = facts(page)
        assert first["Storage used"] in ("being computed…", "not computed yet") or \
            HUMAN_SIZE.fullmatch(first["Storage used"]), first
        assert first["Storage used"] != "0 B" and first["Blobs"] != "0", first
        shown = page.wait_for("the computed totals", lambda: (
            f if (f := facts(page)).get("Blobs", "").isdigit() and "…" not in str(f) else None))
        with proc.client() as client:
            info = api_json(client, "/ui/api/v1/info")
        assert info["storage"]["computing"] is False, info
        assert shown["Blobs"] == str(info["storage"]["blobs"]) and info["storage"]["blobs"] > 0
        assert HUMAN_SIZE.fullmatch(shown["Storage used"]) and shown["Storage used"] != "0 B"
        assert shown["Uploads in progress"] == "0"


def test_unknown_pages_and_repositories_say_not_found(page: Page, registry: Registry) -> None:
    page.open("/ui/no/such/page")
    page.wait_text("Not found")
    page.open("/ui/repositories/no/such-repo")
    page.wait_text("Not found")
    digest = "sha256:" + "0" * 64
    page.open(f"/ui/repositories/{registry.content.image_repo}/manifests/{digest}")
    page.wait_text("Not found")


# --------------------------------------------------------------------------- navigation


def test_links_are_real_urls_and_the_back_button_works(page: Page, registry: Registry) -> None:
    c = registry.content
    page.open("/ui/")
    page.wait_text(c.image_repo)
    page.js("window.__samePage = true")
    repo_link = page.one(f"#main a[href='/ui/repositories/{c.image_repo}']")  # middle-clickable
    repo_link.click()
    page.wait_text(c.image_tag, short(c.image_digest))
    assert page.path() == f"/ui/repositories/{c.image_repo}"
    page.one(f"#main a[href='/ui/repositories/{c.image_repo}/manifests/{c.image_digest}']").click()
    page.wait_text(c.history_command)
    page.back()
    page.wait_text(c.image_tag, c.spare_tag)
    assert page.path() == f"/ui/repositories/{c.image_repo}"
    page.back()
    page.wait_text(c.index_repo)
    assert page.path() == "/ui/"
    # Links were followed in the page (no reload), and the heading took the focus.
    assert page.js("return window.__samePage") is True
    assert page.js("return document.activeElement.tagName") == "H1"
    page.driver.forward()
    page.wait_text(c.spare_tag)


def test_keyboard_reaches_every_control_with_a_visible_focus(page: Page, registry: Registry) -> None:
    from selenium.webdriver.common.keys import Keys

    c = registry.content
    page.open(f"/ui/repositories/{c.index_repo}")
    page.wait_text(c.index_tag)

    def press(key: str) -> dict[str, str]:
        page.driver.switch_to.active_element.send_keys(key)
        return dict(page.js(
            "const e = document.activeElement; const s = getComputedStyle(e);"
            "return {tag: e.tagName, text: e.textContent.trim(), label: e.getAttribute('aria-label') || '',"
            " outline: s.outlineStyle, width: s.outlineWidth};"))

    first = press(Keys.TAB)
    assert first["text"] == "Skip to content", first
    seen = []
    for _ in range(30):  # header links, breadcrumb, digest, platforms, pull box, copy, delete
        focused = press(Keys.TAB)
        assert focused["outline"] != "none" and focused["width"] != "0px", focused
        seen.append(focused)
        if focused["label"].startswith("Delete tag"):
            break
    assert any(f["text"] == "Copy" and f["tag"] == "BUTTON" for f in seen), seen
    assert seen[-1]["label"] == f"Delete tag {c.index_tag}", seen
    opened = press(Keys.ENTER)  # a <button>: Enter activates it
    assert opened["text"] == "Cancel", opened  # the dialog's safe choice has the focus
    assert press(Keys.TAB)["text"] == "Delete tag"
    press(Keys.ESCAPE)
    # The dialog's close event (which gives the focus back) is a task after the key.
    page.wait_for("the focus back on the row's Delete button", lambda: not page.css("dialog")
                  and page.js("return document.activeElement.getAttribute('aria-label')")
                  == f"Delete tag {c.index_tag}")


# --------------------------------------------------------------------------- security


def test_hostile_annotations_show_as_text_and_run_nothing(page: Page, registry: Registry) -> None:
    c = registry.content
    for path in (f"/ui/repositories/{c.image_repo}/manifests/{c.image_digest}",
                 f"/ui/repositories/{c.image_repo}/manifests/{c.artifact_digest}"):
        page.open(path)
        text = page.wait_text("org.example")
        assert HOSTILE in text, text  # shown exactly, as text
        assert page.css("#main img, #main script") == []  # no element came from the data
        assert page.js("return window.__pwned === undefined") is True
    page.open(f"/ui/repositories/{c.image_repo}/manifests/{c.image_digest}")
    assert page.wait_text(HOSTILE).count(HOSTILE) >= 2  # the annotation and the history comment


def test_pages_carry_the_csp_and_it_blocks_inline_script(page: Page, registry: Registry) -> None:
    c = registry.content
    paths = ["/ui/", f"/ui/repositories/{c.image_repo}",
             f"/ui/repositories/{c.image_repo}/manifests/{c.image_digest}", "/ui/registry"]
    with registry.proc.client() as client:
        for path in paths:
            r = client.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert r.headers["content-security-policy"] == CSP
            assert r.headers["x-content-type-options"] == "nosniff"
    for path in paths:
        page.open(path)
        page.wait_for("the page", lambda: page.js(
            "return document.getElementById('main').getAttribute('aria-busy') === null"
            " && !document.querySelector('#main .loading')"))
    problems = [e for e in page.console() if e["level"] == "SEVERE"]
    assert problems == [], problems  # our own pages break no rule and throw nothing
    page.js("const s = document.createElement('script');"
            "s.textContent = 'window.__inline = 1'; document.body.append(s);")
    assert page.js("return window.__inline") is None
    logged = page.wait_for("the CSP report", lambda: [e for e in page.console()
                                                       if "Content Security Policy" in e["message"]])
    assert logged


# --------------------------------------------------------------------------- layout


def test_narrow_screen_has_no_horizontal_scroll(page: Page, registry: Registry) -> None:
    c = registry.content
    page.viewport(375)
    pages = (("/ui/", "catalog-375px", c.index_repo),
             (f"/ui/repositories/{c.index_repo}", "repository-375px", c.index_tag),
             (f"/ui/repositories/{c.image_repo}/manifests/{c.image_digest}", "manifest-375px",
              c.history_command),
             ("/ui/registry", "registry-375px", "Storage used"))
    for path, name, text in pages:
        page.open(path)
        page.wait_text(text)
        width, inner = page.js("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert inner == 375
        assert width <= inner, f"{path}: content {width}px wide in a {inner}px viewport"
        page.screenshot(name)


def test_dark_mode_follows_the_color_scheme(page: Page, registry: Registry) -> None:
    def luminance(css_color: str) -> float:
        r, g, b = (int(x) for x in re.findall(r"\d+", css_color)[:3])
        return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255

    colors = "const s = getComputedStyle(document.body); return [s.backgroundColor, s.color];"
    page.open(f"/ui/repositories/{registry.content.image_repo}")
    page.wait_text(registry.content.image_tag)
    page.color_scheme("light")
    bg, fg = page.js(colors)
    assert luminance(bg) > 0.8 and luminance(fg) < 0.3, (bg, fg)
    page.color_scheme("dark")
    bg, fg = page.js(colors)
    assert luminance(bg) < 0.2 and luminance(fg) > 0.7, (bg, fg)
    page.screenshot("repository-dark")


# --------------------------------------------------------------------------- actions


def test_delete_a_tag_from_the_ui(page: Page, registry: Registry) -> None:
    from selenium.webdriver.common.keys import Keys

    c = registry.content
    page.open(f"/ui/repositories/{c.image_repo}")
    page.wait_text(c.spare_tag)
    button = page.one(f"button[aria-label='Delete tag {c.spare_tag}']")
    button.click()
    dialog = page.one("dialog[open]")
    assert c.spare_tag in dialog.text
    dialog.send_keys(Keys.ESCAPE)  # closes it; nothing deleted; focus back on the button
    page.wait_for("the focus back on the row's Delete button", lambda: not page.css("dialog")
                  and page.js("return document.activeElement.getAttribute('aria-label')")
                  == f"Delete tag {c.spare_tag}")
    with registry.proc.client() as client:
        assert e2e.get_manifest(client, c.image_repo, c.spare_tag).status_code == 200
    button.click()
    page.screenshot("delete-tag-dialog")
    confirm = page.one("dialog[open] button.danger")
    confirm.click()
    page.wait_status(f"Deleted tag {c.spare_tag}.")
    page.wait_gone(c.spare_tag)
    with registry.proc.client() as client:
        assert e2e.get_manifest(client, c.image_repo, c.spare_tag).status_code == 404
        assert e2e.get_manifest(client, c.image_repo, c.image_tag).status_code == 200
        # The tag only: the manifest stays, by digest.
        assert e2e.get_manifest(client, c.image_repo, c.spare_digest).status_code == 200


def test_delete_a_manifest_lists_what_goes_first(page: Page, registry: Registry) -> None:
    c = registry.content
    page.open(f"/ui/repositories/{c.image_repo}/manifests/{c.image_digest}")
    page.wait_text(c.history_command)
    page.one("button.danger").click()
    dialog = page.one("dialog[open]")
    text = dialog.text
    assert c.image_tag in text and short(c.artifact_digest) in text, text  # tag and referrer
    page.one("dialog[open] button.secondary").click()  # Cancel
    page.wait_for("the dialog to close", lambda: not page.css("dialog[open]"))

    page.open(f"/ui/repositories/{c.image_repo}/manifests/{c.spare_digest}")
    page.wait_text("RUN spare")
    page.one("button.danger").click()
    page.one("dialog[open] button.danger").click()
    page.wait_for("the repository page", lambda: page.path() == f"/ui/repositories/{c.image_repo}")
    page.wait_status(f"Deleted manifest {short(c.spare_digest)}.")
    page.wait_text(c.image_tag)
    with registry.proc.client() as client:
        assert e2e.get_manifest(client, c.image_repo, c.spare_digest).status_code == 404
        assert e2e.get_manifest(client, c.image_repo, c.image_digest).status_code == 200


def test_start_a_garbage_collection_from_the_ui(page: Page, registry: Registry) -> None:
    page.open("/ui/registry")
    page.wait_text("Garbage collection", "No runs yet.")
    page.one("#main button").click()  # Start garbage collection
    page.wait_status("Garbage collection started.")

    def finished_run() -> bool:
        page.open("/ui/registry")
        page.wait_text("Garbage collection")
        cells = row_cells_of(page, "table.runs tbody tr")
        return bool(cells) and cells["Finished"] != "running" and cells["Error"] == "–"
    page.wait_for("a finished run in Last runs", finished_run)
    page.screenshot("registry-after-gc")


def test_an_image_pushed_by_docker_shows_its_layers_and_build_history(
    page: Page, registry: Registry, docker_cli: str, tmp_path: Path
) -> None:
    ref = f"{registry.host}/docker/built:v1"
    e2e.build_app(docker_cli, tmp_path / "context", ref)
    try:
        digest, _ = e2e.docker_push(docker_cli, ref)
    finally:
        e2e.docker_remove_images(docker_cli, ref)
    page.open("/ui/repositories/docker/built")
    page.wait_text("v1", short(digest))
    assert page.one("input.pull").get_attribute("value") == f"docker pull {ref}"
    page.one(f"a[href$='/manifests/{digest}']").click()
    text = page.wait_text(digest, "mkdir -p /data", "COPY", "Layers (")
    assert re.search(r"Layers \((\d+),", text) and int(re.search(r"Layers \((\d+),", text)[1]) >= 3
    page.screenshot("manifest-docker")


# --------------------------------------------------------------------------- access


def test_a_user_sees_nothing_of_a_repository_they_cannot_pull(tmp_path: Path) -> None:
    users = htpasswd_file(tmp_path / "htpasswd", {"admin": "admin-pw", "alice": "alice-pw"})
    config = {
        **htpasswd_config(users),
        "policy": {"access": {
            "users": {
                "admin": ["pull", "push", "delete"],
                "alice": [{"actions": ["pull"], "repositories": ["alice"]}],
            },
        }},
    }
    with run_registry(tmp_path, config) as reg:
        with reg.client(auth=("admin", "admin-pw")) as admin:
            mine = push_content(admin, "alice")
            theirs = push_content(admin, "secret")
        with open_browser() as page:
            page.base = reg.url
            page.basic_auth("alice", "alice-pw")
            page.open("/ui/")
            text = page.wait_text(mine.image_repo, mine.index_repo)
            assert "secret" not in text
            page.open("/ui/?q=secret")
            page.wait_text("No repository name contains")
            page.screenshot("catalog-as-alice")
            for path in (f"/ui/repositories/{theirs.image_repo}",
                         f"/ui/repositories/{theirs.image_repo}/manifests/{theirs.image_digest}"):
                page.open(path)
                text = page.wait_text("Not found")
                assert theirs.image_tag not in text and short(theirs.image_digest) not in text
            # Alice may pull but not delete: the page offers no delete.
            page.open(f"/ui/repositories/{mine.image_repo}")
            page.wait_text(mine.image_tag)
            assert page.css("button.danger") == []
        with httpx.Client(base_url=reg.url, auth=("alice", "alice-pw"), timeout=30) as alice:
            r = alice.get(f"/ui/api/v1/repositories/{theirs.image_repo}")
            assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_public_registry_browses_anonymously_and_signs_in_for_more(tmp_path: Path) -> None:
    """htpasswd + ``policy.access.anonymous: [pull]`` on ``pub``: an anonymous visitor sees
    what anonymous may pull and a "Sign in" link to /ui/login, which (credentials given, as
    the browser's prompt would) brings the user back to the page, signed in."""
    users = htpasswd_file(tmp_path / "htpasswd", {"admin": "admin-pw"})
    config = {
        **htpasswd_config(users),
        "policy": {"access": {
            "anonymous": [{"actions": ["pull"], "repositories": ["pub"]}],
            "users": {"admin": ["pull", "push", "delete"]},
        }},
    }
    with run_registry(tmp_path, config) as reg:
        with reg.client(auth=("admin", "admin-pw")) as admin:
            public = push_content(admin, "pub")
            private = push_content(admin, "secret")
        with open_browser() as page:
            page.base = reg.url
            page.open("/ui/")
            text = page.wait_text(public.image_repo, public.index_repo)
            assert private.image_repo not in text
            page.open(f"/ui/repositories/{public.image_repo}")
            page.wait_text(public.image_tag)
            assert page.css("button.danger") == []  # anonymous may not delete
            link = page.one("#who a")
            assert link.text == "Sign in"
            next_path = f"/ui/repositories/{public.image_repo}".replace("/", "%2F")
            assert link.get_attribute("href") == f"{reg.url}/ui/login?next={next_path}"
            page.basic_auth("admin", "admin-pw")  # what the browser sends after its prompt
            link.click()
            page.wait_for("the signed-in header",
                          lambda: "Signed in as admin" in page.one("#who").text)
            assert page.path() == f"/ui/repositories/{public.image_repo}"
            page.wait_text(public.image_tag)
            assert page.css("button.danger")  # admin may delete
            page.open("/ui/")
            page.wait_text(public.image_repo, private.image_repo)


def test_token_auth_asks_for_a_token_and_shows_what_it_grants(tmp_path: Path) -> None:
    from test_auth_token import ISSUER, SERVICE, Issuer, repo

    issuer = Issuer(tmp_path)
    config = {"auth": {"token": {"realm": "http://127.0.0.1:9/token", "service": SERVICE,
                                 "issuer": ISSUER, "rootcertbundle": str(issuer.bundle)}}}
    everything = issuer.token([repo(f"{p}/{r}", "pull", "push")
                               for p in ("tok", "hidden") for r in ("app", "multi")], ttl=600)
    with run_registry(tmp_path, config) as reg:
        with reg.client(headers={"Authorization": f"Bearer {everything}"}) as pusher:
            mine = push_content(pusher, "tok")
            theirs = push_content(pusher, "hidden")
        granted = issuer.token([repo(mine.image_repo, "pull"), repo(mine.index_repo, "pull")],
                               sub="reader", ttl=600)
        with open_browser() as page:
            page.base = reg.url
            page.open("/ui/")
            page.wait_text("Sign in", "token")
            page.screenshot("token-sign-in")
            page.one("#token").send_keys("not-a-token")
            page.one(".token-form button").click()
            page.wait_text("rejected")  # a bad token: asked again, with the reason
            page.one("#token").send_keys(granted)
            page.one(".token-form button").click()
            text = page.wait_text(mine.image_repo, mine.index_repo)
            assert theirs.image_repo not in text
            assert page.js("return sessionStorage.getItem('registry-ui-token')") == granted
            page.open(f"/ui/repositories/{mine.image_repo}")  # kept for the tab's new pages
            page.wait_text(mine.image_tag)
            page.open(f"/ui/repositories/{theirs.image_repo}")
            page.wait_text("Not found")
            page.one("#who button").click()  # Forget token
            page.wait_text("Sign in")
            assert page.js("return sessionStorage.getItem('registry-ui-token')") is None


# --------------------------------------------------------------------------- deployment


def test_the_root_url_sends_a_browser_to_the_ui(page: Page, registry: Registry) -> None:
    page.open("/")
    page.wait_text(registry.content.image_repo)
    assert page.path() == "/ui/"


def test_the_ui_works_under_an_http_prefix(tmp_path: Path) -> None:
    prefix = "/registry"
    config = {"http": {"prefix": prefix}}
    with run_registry(tmp_path, config, ready=lambda r: r.status_code in (200, 404)) as reg:
        with httpx.Client(base_url=reg.url + prefix, timeout=30) as client:
            assert client.get("/v2/").status_code == 200
            c = push_content(client)
        with open_browser() as page:
            page.base = reg.url
            page.open(f"{prefix}/ui/")
            page.wait_text(c.image_repo, c.index_repo)
            assert page.one("a[data-nav='registry']").get_attribute("pathname") == \
                f"{prefix}/ui/registry"
            page.one(f"#main a[href='{prefix}/ui/repositories/{c.index_repo}']").click()
            page.wait_text(c.index_tag, "linux/arm64")
            page.one(f"a[href='{prefix}/ui/repositories/{c.index_repo}/manifests/"
                     f"{c.index_digest}']").click()
            page.wait_text("Platforms", short(c.child_digests[0]))
            page.back()
            page.wait_text(c.index_tag)
            assert page.path() == f"{prefix}/ui/repositories/{c.index_repo}"
            page.one("a[data-nav='registry']").click()
            page.wait_text("Storage used")
            assert [e for e in page.console() if e["level"] == "SEVERE"] == []


def test_a_registry_that_stops_answering_gives_a_message_not_a_blank_page(
    tmp_path: Path,
) -> None:
    with run_registry(tmp_path) as reg:
        with reg.client() as client:
            c = push_content(client)
        with open_browser() as page:
            page.base = reg.url
            page.open("/ui/")
            page.wait_text(c.image_repo)
            assert reg.stop() == 0
            page.one(f"#main a[href='/ui/repositories/{c.image_repo}']").click()
            text = page.wait_text("Error", "did not answer")
            assert "All repositories" in text  # a way on, not a dead end
            page.screenshot("registry-gone")
