"""JSON that a client controls, parsed with a size and a nesting limit (issue 12, item 3).

``json.loads`` recurses once per nesting level: about a thousand ``[`` in a manifest or a
token raise ``RecursionError``, which no ``except ValueError`` catches, so the request ended
as a 500 with a traceback. Deep documents that do parse are a second hazard: everything
that walks them afterwards (``str()``, ``json.dumps``, our own validators) recurses again.

:func:`loads` turns both into :class:`JSONLimitError`, a ``ValueError``, so every caller's
existing "not valid JSON" branch answers it (MANIFEST_INVALID, invalid_token, ...). Used
for every document a client sends or that storage holds on a client's behalf (manifests,
tokens); configuration files and our own state objects are trusted and use ``json``.

A leaf: imports nothing from the project.
"""

from __future__ import annotations

import json
from typing import Any

# Nesting levels a document may have. The deepest legitimate documents are an image index
# (index -> manifests -> descriptor -> platform -> features: 5) and a schema1 manifest's
# signature header (7); Go's encoding/json, which the reference uses, stops at 10,000. 64 is
# far above any real manifest and far below the ~1,000 frames that json.loads may recurse.
MAX_DEPTH = 64


class JSONLimitError(ValueError):
    """The document is larger or more deeply nested than allowed."""


def loads(
    data: bytes | str, *, max_depth: int | None = MAX_DEPTH, max_bytes: int | None = None
) -> Any:
    """Parse ``data`` as JSON.

    Raises ValueError (``json.JSONDecodeError`` for malformed text, ``UnicodeDecodeError`` for
    bytes that are not UTF-8/16/32, :class:`JSONLimitError` past ``max_bytes`` or
    ``max_depth``). Never raises RecursionError. ``max_depth=None`` checks no depth beyond
    what the parser can take: for stored documents read only at their top level, which the
    reference (nesting up to 10,000) may have accepted deeper than we would.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise JSONLimitError(f"document exceeds {max_bytes} bytes")
    try:
        doc = json.loads(data)
    except RecursionError:
        raise JSONLimitError("document nested too deeply to parse") from None
    if max_depth is not None and depth_exceeds(doc, max_depth):
        raise JSONLimitError(f"document nested deeper than {max_depth} levels")
    return doc


def depth_exceeds(doc: Any, max_depth: int) -> bool:
    """Whether ``doc`` (parsed JSON) nests containers more than ``max_depth`` levels deep.

    Iterative, so it cannot itself run out of stack; visits each container once.
    """
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return True
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False
