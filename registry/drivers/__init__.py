"""Storage drivers: keys and bytes only (DESIGN.md, Layers). No driver knows what a manifest is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Driver


def make_driver(name: str, params: Mapping[str, Any], *, redirect_disable: bool = False) -> Driver:
    """Build the driver the configuration names. Never contacts the backend."""
    if name == "filesystem":
        from .filesystem import FilesystemDriver

        return FilesystemDriver.from_params(params)
    if name == "inmemory":
        from .memory import MemoryDriver

        return MemoryDriver.from_params(params)
    if name == "s3":
        from .s3.driver import S3Driver

        return S3Driver.from_params(params, redirect_disable=redirect_disable)
    raise ValueError(f"unknown storage driver: {name}")
