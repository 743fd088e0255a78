"""The HTTP layer: the route table (``routes.py``), what handlers get (``request.py``), the
handlers, the ASGI app (``app.py``), the JSON error envelope, and hypercorn's hardening.

It talks to storage (never to the drivers), reports exchanges to ``ops``, and takes its
access actions from ``auth.policy``; nothing in it imports the app. See registry/README.md.
"""
