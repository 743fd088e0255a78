"""Ordered, pruned walks of a key tree: the order the catalog pages in.

``walk_tree(driver, path, descend=..., start_after=...)`` yields every key below ``path``
(files and directories) depth first, each directory's children in the sorted order of their
names, an entry before its subtree: distribution v3's ``WalkFallback`` order (it sorts a
directory's full child paths, which share their prefix, so it is name order), which is what
its filesystem catalog pages in. Names compare by code point, which is UTF-8 byte order, as
Go compares strings.

- ``descend(key)``: a pure predicate, False means the directory's subtree is not read at all
  (the catalog skips ``_layers``, ``_manifests``, ``_uploads``). It may run in a worker thread.
- ``start_after``: a key; only entries after it in the order above are yielded, and subtrees
  wholly before it are never read (v3's start-after hint, without its re-walk of the hint's
  own subtree). It need not exist.
- Key order: a driver with ``lists_in_key_order = True`` (S3) is walked in its keys' byte
  order instead, as v3's S3 walk is one flat listing: siblings compare as ``name + "/"``,
  so ``a-b`` < ``a.b`` < ``a/...`` < ``a_b``. (v3's filesystem and S3 catalogs differ in
  just this; each side here matches v3 on the same storage.)
- A missing ``path`` yields nothing; a directory removed during the walk is skipped.
- Work is proportional to what the consumer takes: stopping the iteration (``aclosing``)
  stops the reads. The filesystem reads a bounded batch of directories per worker-thread
  call (growing from :data:`FIRST_BATCH` to :data:`BATCH_ENTRIES` keys), so a walk of
  10,000 repositories is about fifteen thread hops, not one per directory. Other drivers list one directory per ``list`` call.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable
from typing import Any

from .base import Driver, PathNotFound

# Keys yielded per worker-thread call on the filesystem: the first call reads FIRST_BATCH
# keys, each next one twice as many up to BATCH_ENTRIES. A repository is ~4 keys (itself,
# _layers, _manifests, _uploads): a 10-name catalog page is one call that reads ~16
# repositories, a 100-name page 3 calls, a 10,000-repository walk ~15 calls.
FIRST_BATCH = 64
BATCH_ENTRIES = 4096

Descend = Callable[[str], bool]
DirListing = list[str]  # a directory's child names, sorted (by name, or as keys: name + "/")


def _always(key: str) -> bool:
    return True


def split_key(key: str) -> list[str]:
    """``/a/b/c`` -> ``["a", "b", "c"]`` (the components the order compares)."""
    return [p for p in key.split("/") if p] if key else []


class _Frame:
    """One directory being walked: its remaining children (sorted) and, while the directory
    is an ancestor of ``start_after``, the depth of the component that bounds them."""

    __slots__ = ("bound", "children", "key", "pos")

    def __init__(self, key: str, children: DirListing, bound: int | None) -> None:
        self.key = key
        self.children = children
        self.pos = 0
        self.bound = bound  # index into start_after's components, None: all children follow


ListDir = Callable[[str], "DirListing | None"]


class TreeCursor:
    """The walk's state between batches: a stack of frames. Pure Python, no I/O of its own:
    ``step`` is given the function that lists one directory (sorted child names; empty for
    a file; FileNotFoundError if it is gone; None if the listing is not at hand yet, which
    pauses
    the step until :meth:`provide` hands it over), so the same rules serve a worker thread
    that reads directories itself and an async driver that lists them one by one."""

    def __init__(
        self, root: str, descend: Descend, start_after: str, key_order: bool = False
    ) -> None:
        self.root = root.rstrip("/")
        self.key_order = key_order  # siblings compare as name + "/" (their keys' order)
        self.descend = descend
        self.after = split_key(start_after)
        base = split_key(root)
        # -1: the whole tree is before start_after; an index: the root is an ancestor of
        # start_after and its children are bounded by that component; None: all follow.
        bound: int | None = None
        if self.after:
            if self.after[: len(base)] == base:
                bound = len(base) if len(self.after) > len(base) else None
            elif self.after > base:
                bound = -1
        self.stack: list[_Frame] = []
        self.waiting: tuple[str, int | None] | None = (self.root, bound)  # to be listed
        self.done = bound == -1

    def step(self, list_dir: ListDir, limit: int) -> list[str]:
        """Advance by at most ``limit`` yielded keys; fewer at the end (then ``done``) or
        when a listing is needed (then ``waiting`` names it)."""
        out: list[str] = []
        if self.waiting is not None and not self.done:
            key, bound = self.waiting
            self.waiting = None
            self._push(list_dir, key, bound)
        stack = self.stack
        after = self.after
        while stack and len(out) < limit and self.waiting is None:
            frame = stack[-1]
            if frame.pos >= len(frame.children):
                stack.pop()
                continue
            name = frame.children[frame.pos]
            frame.pos += 1
            key = f"{frame.key}/{name}"
            if frame.bound is not None:
                hint = after[frame.bound]
                if self.key_order and name != hint:
                    # Every key below a sibling starts "name/"; compare those prefixes.
                    if name + "/" < hint + "/":
                        continue
                elif name < hint:
                    continue  # its whole subtree is before start_after
                if name == hint:
                    # start_after or an ancestor of it: not yielded; its subtree is walked,
                    # bounded by the next component (unbounded below start_after itself).
                    nxt = frame.bound + 1
                    if self.descend(key):
                        self._push(list_dir, key, nxt if nxt < len(after) else None)
                    continue
            out.append(key)
            # Whether it is a directory is learnt by listing it (a file lists empty): a
            # stat per entry would cost more than the listings it saves.
            if self.descend(key):
                self._push(list_dir, key, None)
        if not stack and self.waiting is None:
            self.done = True
        return out

    def provide(self, children: DirListing) -> None:
        """The listing of ``waiting`` (sorted child names; empty if it is gone)."""
        assert self.waiting is not None
        key, bound = self.waiting
        self.waiting = None
        if children:
            self.stack.append(_Frame(key, children, bound))

    def _push(self, list_dir: ListDir, key: str, bound: int | None) -> None:
        try:
            children = list_dir(key)
        except FileNotFoundError:
            return  # removed while we walked (or a missing root): nothing below it
        if children is None:
            self.waiting = (key, bound)
        elif children:
            self.stack.append(_Frame(key, children, bound))


def scan_sorted(full: str) -> DirListing:
    """A directory's child names, sorted; empty for a file. Skips the filesystem driver's
    in-flight temp files. Raises FileNotFoundError. (``listdir``: half the cost of
    ``scandir``'s entry objects on a 10,000-entry directory.)"""
    try:
        names = os.listdir(full)
    except NotADirectoryError:
        return []
    names.sort()
    if names and any(n.startswith(".tmp-") for n in names):
        names = [n for n in names if not n.startswith(".tmp-")]
    return names


def _not_at_hand(key: str) -> None:
    return None


async def _listing(driver: Driver, key: str, key_order: bool) -> DirListing:
    """A directory's children through ``list`` (listing a file finds nothing)."""
    try:
        children = await driver.list(key or "/")
    except PathNotFound:
        return []
    names = [c.rsplit("/", 1)[1] for c in children]
    names.sort(key=(lambda n: n + "/") if key_order else None)
    return names


async def walk_tree(
    driver: Driver, path: str, *, descend: Descend = _always, start_after: str = ""
) -> AsyncGenerator[str, None]:
    """See the module docstring. Drivers with ``walk_batch`` (the filesystem) read many
    directories per call; others are walked with ``list``, one directory per call."""
    key_order = bool(getattr(driver, "lists_in_key_order", False))
    cursor = TreeCursor(path, descend, start_after, key_order)
    batch: Any = getattr(driver, "walk_batch", None)
    size = FIRST_BATCH
    while not cursor.done:
        if batch is not None:
            keys = await batch(cursor, size)
            size = min(size * 2, BATCH_ENTRIES)
        else:
            if cursor.waiting is not None:
                cursor.provide(await _listing(driver, cursor.waiting[0], key_order))
            keys = cursor.step(_not_at_hand, BATCH_ENTRIES)
        for key in keys:
            yield key
