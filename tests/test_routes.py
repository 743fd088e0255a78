"""The route table (http/routes.py): each record's template is both its pattern and its URL
builder, and the router, the 405 answer and the access policy read the same record. Pure."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.http import router
from registry.http.request import Route
from registry.http.routes import ROUTES, UPLOAD, UPLOADS

SAMPLE = {"name": "team/blobs/manifests", "reference": "v1", "digest": "sha256:" + "a" * 64,
          "uuid": "0f1e2d3c", "path": "repositories/team/app", "file": "app.js"}


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.label)
def test_a_routes_own_url_routes_back_to_it_with_the_same_params(route: Route) -> None:
    params = {k: v for k, v in SAMPLE.items() if "{" + k + "}" in route.template}
    path = route.path(**params)
    for method in route.handlers:
        m = router.match(path, method)
        assert m is not None and m.method_ok
        assert (m.route, m.params) == (route, params)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.label)
def test_a_method_a_route_lacks_answers_405_with_its_allow(route: Route) -> None:
    params = {k: v for k, v in SAMPLE.items() if "{" + k + "}" in route.template}
    wrong = next(m for m in ("PATCH", "OPTIONS") if m not in route.handlers)
    m = router.match(route.path(**params), wrong)
    # Two records may share a template (the UI's manifest GET and its DELETE, which alone
    # carries the notification event kind): the first of them answers the 405.
    assert m is not None and not m.method_ok
    assert m.route is next(r for r in ROUTES if r.template == route.template)
    assert set(route.allow_header.split(", ")) >= set(route.handlers)


def test_every_method_of_every_route_names_its_access_action() -> None:
    for route in ROUTES:
        assert set(route.access) == set(route.handlers), route
    with pytest.raises(ValueError, match="access"):
        Route("x", "/x", handlers={"GET": UPLOADS.handlers["POST"]}, access={})


def test_labels_are_unique_and_the_optional_trailing_slash_matches_both_ways() -> None:
    assert len({r.label for r in ROUTES}) == len(ROUTES)
    for path in ("/v2/a/blobs/uploads/", "/v2/a/blobs/uploads"):
        m = router.match(path, "POST")
        assert m is not None and m.route is UPLOADS
    m = router.match("/v2/a/blobs/uploads/u1", "PATCH")
    assert m is not None and m.route is UPLOAD and m.params == {"name": "a", "uuid": "u1"}


def _match_every_pattern(path: str, method: str) -> router.Match | None:
    """router.match without its marker prefilter: every pattern tried, in table order."""
    first_shape = None
    for route in ROUTES:
        m = route.pattern.match(path)
        if m is None:
            continue
        if method in route.allowed:
            return router.Match(route, m.groupdict(), True)
        if first_shape is None:
            first_shape = router.Match(route, m.groupdict(), False)
    return first_shape


PIECES = ["v2", "", "a", "b.c", "blobs", "uploads", "manifests", "tags", "list", "_catalog",
          "referrers", "admin", "gc", "v1", SAMPLE["digest"], "%2F"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=7), st.booleans(),
       st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]))
def test_the_routers_prefilter_never_changes_what_a_path_matches(
    parts: list[str], slash: bool, method: str
) -> None:
    """Each route's marker (a literal every matching path contains) only spares patterns
    that cannot match: same route, params and 405-ness as trying every pattern."""
    path = "/" + "/".join(parts) + ("/" if slash else "")
    assert router.match(path, method) == _match_every_pattern(path, method)
