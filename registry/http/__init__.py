"""The HTTP layer: routes, headers, status codes, the JSON error envelope."""
