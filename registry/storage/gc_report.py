"""What a garbage-collection run is asked to do, how it reports progress, what it did.

The interface between the collectors (gc.py, gc_online.py) and their callers (the
``garbage-collect`` command, the server's scheduled and on-demand runs, /admin/gc).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SETTLE_SECONDS = 300.0  # > any push's check-to-write window (gc_online.py, step 5)


class LockLost(Exception):
    """The collection lock expired or was taken over; the run stops (online)."""


@dataclass(frozen=True)
class GCOptions:
    dry_run: bool = False
    delete_untagged: bool = False
    online: bool = False  # the safe protocol (module docstring); False: the reference's
    grace_period: float = 0.0  # seconds; online only
    settle: float = SETTLE_SECONDS  # seconds; online only
    concurrency: int | None = None  # None: by driver (LOCAL_CONCURRENCY / CONCURRENCY)


@dataclass
class GCReport:
    """What a run found and did (digests as strings). In a dry run, the deletions are
    what a real run would have done."""

    dry_run: bool = False
    online: bool = False
    repositories: int = 0
    manifests: int = 0  # manifest revisions seen, over all repositories
    blobs: int = 0  # blobs found
    marked: int = 0  # distinct digests marked
    manifests_deleted: list[tuple[str, str]] = field(default_factory=list)  # (repo, digest)
    blobs_deleted: list[tuple[str, int]] = field(default_factory=list)  # (digest, size)
    links_deleted: list[tuple[str, str]] = field(default_factory=list)  # (repo, digest)
    spared_young: int = 0  # unmarked blobs kept by the grace period
    rescued: list[str] = field(default_factory=list)  # online: referenced again mid-run
    restored_revisions: list[tuple[str, str]] = field(default_factory=list)
    restored_links: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def blobs_kept(self) -> int:
        return self.blobs - len(self.blobs_deleted)

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.blobs_deleted)

    def summary(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "online": self.online,
            "repositories": self.repositories,
            "manifests": self.manifests,
            "manifests_deleted": len(self.manifests_deleted),
            "blobs_kept": self.blobs_kept,
            "blobs_deleted": len(self.blobs_deleted),
            "bytes_freed": self.bytes_freed,
            "layer_links_deleted": len(self.links_deleted),
            "spared_by_grace_period": self.spared_young,
            "rescued": len(self.rescued),
            "warnings": len(self.warnings),
            "seconds": round(self.seconds, 3),
        }


class Progress:
    """Where the engine reports how far it got; the default ignores everything.

    ``phase`` starts a phase (``total`` None when unknown), ``advance`` moves it on,
    ``count`` updates a named running count (repositories, manifests, blobs, ...).
    """

    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def count(self, name: str, value: int) -> None:
        pass
