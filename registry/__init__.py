"""A small, fast OCI Distribution (Docker Registry v2 API) server on trio."""

__version__ = "0.1.0"
