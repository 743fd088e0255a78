"""The ``registry`` command: ``serve [CONFIG]``, ``garbage-collect CONFIG``, ``--version``.

The only place that reads ``os.environ`` (DESIGN.md, Configuration).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from .config import ConfigError, load_config

log = logging.getLogger("registry")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="registry",
        description="An OCI Distribution (Docker Registry v2) server, drop-in for registry:3.",
    )
    p.add_argument("--version", action="version", version=f"registry {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("serve", help="serve the registry API")
    s.add_argument("config", nargs="?", help="YAML configuration file (default: built-in)")
    g = sub.add_parser("garbage-collect", help="delete blobs no manifest references")
    g.add_argument("config", help="YAML configuration file")
    g.add_argument("--dry-run", "-d", action="store_true", help="print what would be deleted")
    g.add_argument(
        "--delete-untagged", "-m", action="store_true", help="delete manifests no tag points at"
    )
    g.add_argument("--quiet", "-q", action="store_true", help="only print the summary")
    g.add_argument(
        "--force", action="store_true", help="take the collection lock whatever process holds it"
    )
    return p


def _load(path: str | None):  # type: ignore[no-untyped-def]
    if path is None:
        path = os.environ.get("REGISTRY_CONFIGURATION_PATH") or None
    try:
        config, warnings = load_config(path, os.environ)
    except ConfigError as e:
        print(f"registry: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return config, warnings


M_TRIM_THRESHOLD = -1  # <malloc.h> mallopt parameters
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024  # allocations this big get their own mapping, freed at once
TRIM_THRESHOLD = 4 * 1024 * 1024  # free heap kept for reuse before it goes back to the OS


def _pin_mmap_threshold() -> None:
    """Keep big buffers (S3 parts) out of the malloc heap and reuse the data-path ones.

    glibc raises its mmap threshold after the first large free (up to 32 MiB), so later
    part-sized buffers come from the heap and are never returned to the OS: resident
    memory ratchets up to the peak of all uploads ever. Setting the threshold explicitly
    turns that adjustment off. It sits above the 512 KiB read/hash pieces, and a few MiB
    of free heap are kept (instead of 128 KiB), so those pieces reuse warm heap pages: a
    fresh mapping per piece page-faulted every 4 KiB and halved pull throughput.
    A no-op where mallopt is missing (musl, macOS).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


def _raise_open_file_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each connection holds a descriptor,
    and the usual soft default (1024) would cap the server at a few hundred clients while the
    hard limit is far higher (Docker: 1048576). The connection cap (http.maxconnections) is
    derived from the raised value. Logs, and goes on, where the limit cannot be raised."""
    try:
        import resource
    except ImportError:  # not a Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:  # macOS: infinity is refused
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, e)


def main(argv: list[str] | None = None) -> int:
    _pin_mmap_threshold()
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    config, warnings = _load(args.config)
    from . import logs

    logs.setup(config.log.level, config.log.formatter, config.log.fields)
    for w in warnings:
        log.warning("configuration: %s", w)
    if args.command == "serve":
        from .server import run

        _raise_open_file_limit()

        if config.storage.driver == "filesystem":
            from .drivers.filesystem import check_writable

            problem = check_writable(str(config.storage.params.get("rootdirectory") or "/var/lib/registry"))
            if problem is not None:
                print(f"registry: {problem}", file=sys.stderr)
                return 2

        try:
            return run(config)
        except OSError as e:
            where = config.http.addr + (f" or {config.http.debug_addr}" if config.http.debug_addr else "")
            print(f"registry: cannot listen on {where}: {e.strerror or e}", file=sys.stderr)
            return 1
    if args.command == "garbage-collect":
        from .gc_cli import run_gc

        return run_gc(
            config, dry_run=args.dry_run, delete_untagged=args.delete_untagged, quiet=args.quiet,
            force=args.force,
        )
    return 2
