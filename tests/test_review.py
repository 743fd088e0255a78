"""Findings of the hostile review of issues 16-18 (pull-through cache, Redis, web UI): each
test here failed before its fix. Real apps over real sockets (``serve_registry`` builds the
app from a Config as ``registry`` does; the proxy tests use tests/proxy_support.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from oci import error_codes, push_image
from test_ui_api import UI, serve_registry

TIMEOUT = 30  # seconds any one test may take (none may hang)


@pytest.mark.parametrize("path", ["/v2/_catalog", "/v2/team/app/tags/list", f"{UI}/repositories"])
@pytest.mark.parametrize("n", ["%C2%B2", "%D9%A3", "1" * 5000, "0" * 5000])
async def test_odd_page_sizes_are_400_never_500(nursery: trio.Nursery, tmp_path: Path,
                                                 path: str, n: str) -> None:
    """``?n=`` with a character str.isdigit() takes but int() refuses (superscript two),
    a non-ASCII digit, or more digits than int() converts: 400 PAGINATION_NUMBER_INVALID
    (the UI API takes a huge n as its largest page, as it takes any n above it)."""
    with trio.fail_after(TIMEOUT):
        url = await serve_registry(nursery, tmp_path)
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            await push_image(c, "team/app", "latest")
            r = await c.get(f"{path}?n={n}")
    if n == "1" * 5000 and path.startswith(UI):  # the UI takes a large n as its largest page
        assert r.status_code == 200 and r.json()["repositories"][0]["name"] == "team/app"
        return
    assert r.status_code == 400, r.text
    assert error_codes(r) == ["PAGINATION_NUMBER_INVALID"]
