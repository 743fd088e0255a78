"""The web UI's server side (issue 18; the contract is ``API.md`` beside this file).

It sits at the HTTP layer's level: its handlers are routes of the one route table
(``http/routes.py``) and take ``(Services, Request)`` like every other handler; it reads
storage (``storage/``, never the drivers) and asks ``auth`` who may do what.

- ``service.py``: :class:`~.service.UIService`, everything the handlers share, built once
  with the app (``svc.ui``); None there means ``ui.enabled: false`` (the routes are then
  left out of the table the router reads, so /ui answers as an unknown path).
- ``static.py``, ``pages.py``: the front end's files (``static/``, owned by the front end),
  read once at start-up, served with content-hash names; every page path gets index.html.
- ``api.py``, ``actions.py``: the JSON API (``/ui/api/v1``) and its deletes and GC start,
  with the cross-site request rules.
- ``index.py``: the per-worker index (catalog, repository summaries, storage totals).
- ``model.py``: what a manifest and an image config say, read from verified bytes.
- ``access.py``: pull/delete/admin questions per repository.
- ``headers.py``: the CSP and the other headers of every /ui response, caching policies.
"""
