"""The whole storage key layout, identical to the reference registry's (SPEC.md, Storage layout).

Nothing else in the project spells a key. The tree, under the driver's root::

    /docker/registry/v2/
        blobs/<alg>/<hex[0:2]>/<hex>/data                     the bytes of every blob and manifest
        repositories/<name>/
            _layers/<alg>/<hex>/link                         "<alg>:<hex>"  blob linked into repo
            _manifests/revisions/<alg>/<hex>/link            manifest revision in repo
            _manifests/tags/<tag>/current/link               digest the tag points at
            _manifests/tags/<tag>/index/<alg>/<hex>/link     every digest the tag has pointed at
            _uploads/<uuid>/data                             upload bytes in progress
            _uploads/<uuid>/startedat                        RFC 3339 time the session began
            _uploads/<uuid>/hashstates/<alg>/<offset>        hash state after <offset> bytes (Go format)
            _uploads/<uuid>/lease                            ours: the one writer's lease (upload_lease.py)
            _uploads/<uuid>/leasetakeover/<id>               ours: who took over an expired lease
        _gc/lock                                             online GC: one collection at a time
        _gc/lastrun                                          online GC: when the last one finished
        _gc/trash/<alg>/<hex>/data                           online GC: blobs being deleted
        _gc/plan                                             online GC: the blobs a run unlinks
        _proxy/expiry/<kind>X<name, / as S>X<alg>X<hex>X<expires>   pull-through cache: an entry
    /scheduler-state.json                                    registry:3's proxy expiry state (all entries)

``_gc/`` is ours (storage/gc.py); the reference never looks there (it walks only
``blobs/`` and ``repositories/``), so a directory we collected stays valid for it.

Repository names are validated (reference.is_valid_name) before they get here, so they cannot
contain ``..`` or empty components; these functions assert it again because a key outside the
root is the one bug we never want.
"""

from __future__ import annotations

from ..digest import Digest
from ..reference import is_valid_name, is_valid_tag

ROOT = "/docker/registry/v2"
BLOBS = f"{ROOT}/blobs"
REPOSITORIES = f"{ROOT}/repositories"

# Directory names inside a repository that end a repository name when walking the tree.
LAYERS = "_layers"
MANIFESTS = "_manifests"
UPLOADS = "_uploads"
REPO_MARKERS = (LAYERS, MANIFESTS, UPLOADS)


def repo_root(name: str) -> str:
    if not is_valid_name(name):
        raise ValueError(f"invalid repository name {name!r}")
    return f"{REPOSITORIES}/{name}"


def _digest_dir(d: Digest) -> str:
    return f"{d.algorithm}/{d.hex}"


def blob_dir(d: Digest) -> str:
    return f"{BLOBS}/{d.algorithm}/{d.hex[:2]}/{d.hex}"


def blob_data(d: Digest) -> str:
    return f"{blob_dir(d)}/data"


def layer_dir(name: str, d: Digest) -> str:
    return f"{repo_root(name)}/{LAYERS}/{_digest_dir(d)}"


def layer_link(name: str, d: Digest) -> str:
    return f"{layer_dir(name, d)}/link"


def layers_dir(name: str, algorithm: str = "sha256") -> str:
    return f"{repo_root(name)}/{LAYERS}/{algorithm}"


def revision_dir(name: str, d: Digest) -> str:
    return f"{repo_root(name)}/{MANIFESTS}/revisions/{_digest_dir(d)}"


def revision_link(name: str, d: Digest) -> str:
    return f"{revision_dir(name, d)}/link"


def revisions_dir(name: str, algorithm: str = "sha256") -> str:
    return f"{repo_root(name)}/{MANIFESTS}/revisions/{algorithm}"


def tags_dir(name: str) -> str:
    return f"{repo_root(name)}/{MANIFESTS}/tags"


def tag_dir(name: str, tag: str) -> str:
    if not is_valid_tag(tag):
        raise ValueError(f"invalid tag {tag!r}")
    return f"{tags_dir(name)}/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_dir(name: str, tag: str, d: Digest) -> str:
    return f"{tag_dir(name, tag)}/index/{_digest_dir(d)}"


def tag_index_link(name: str, tag: str, d: Digest) -> str:
    return f"{tag_index_dir(name, tag, d)}/link"


def uploads_dir(name: str) -> str:
    return f"{repo_root(name)}/{UPLOADS}"


def upload_dir(name: str, upload_id: str) -> str:
    if not upload_id or not all(c in "0123456789abcdef-" for c in upload_id):
        raise ValueError(f"invalid upload id {upload_id!r}")
    return f"{uploads_dir(name)}/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def upload_startedat(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


def upload_hashstate(name: str, upload_id: str, algorithm: str, offset: int) -> str:
    if algorithm not in ("sha256", "sha512") or offset < 0:
        raise ValueError(f"invalid hash state {algorithm!r} at {offset}")
    return f"{upload_dir(name, upload_id)}/hashstates/{algorithm}/{offset}"


def upload_lease(name: str, upload_id: str) -> str:
    """The session's writer lease (ours; the reference ignores it, and it goes with the
    session)."""
    return f"{upload_dir(name, upload_id)}/lease"


def upload_lease_takeover(name: str, upload_id: str, expired: str) -> str:
    """Created exclusively by whoever takes over the expired lease ``expired`` (hex id)."""
    if not expired or not all(c in "0123456789abcdef" for c in expired):
        raise ValueError(f"invalid lease id {expired!r}")
    return f"{upload_dir(name, upload_id)}/leasetakeover/{expired}"


GC = f"{ROOT}/_gc"
GC_LOCK = f"{GC}/lock"
GC_LAST_RUN = f"{GC}/lastrun"
GC_TRASH = f"{GC}/trash"
GC_PLAN = f"{GC}/plan"


def gc_trash_dir(d: Digest) -> str:
    return f"{GC_TRASH}/{_digest_dir(d)}"


def gc_trash_data(d: Digest) -> str:
    return f"{gc_trash_dir(d)}/data"


# The pull-through cache's expiry entries (registry/proxy/expiry.py): ours, one key per
# entry (no read-modify-write of one file between workers); registry:3 keeps them all in
# one file at the driver root (registry/proxy/proxyregistry.go), which we import and mirror.
PROXY_EXPIRY = f"{ROOT}/_proxy/expiry"
SCHEDULER_STATE = "/scheduler-state.json"


def proxy_expiry_entry(kind: str, name: str, d: Digest, expires: int) -> str:
    """One flat key per entry and expiry (one listing reads them all, no object reads):
    the separators are upper-case letters, which names, kinds, digests and numbers never
    contain (drivers allow [A-Za-z0-9._-]). ``expires``: unix seconds."""
    if not is_valid_name(name) or kind not in ("blob", "manifest"):
        raise ValueError(f"invalid expiry entry {kind!r} {name!r}")
    return f"{PROXY_EXPIRY}/{kind}X{name.replace('/', 'S')}X{d.algorithm}X{d.hex}X{int(expires)}"


def parse_proxy_expiry_entry(path: str) -> tuple[str, str, Digest, int] | None:
    """(kind, name, digest, expires) of an expiry entry's key, None for anything else."""
    parts = path.rsplit("/", 1)[-1].split("X")
    if len(parts) != 5 or parts[0] not in ("blob", "manifest") or not parts[4].isdigit():
        return None
    name = parts[1].replace("S", "/")
    try:
        d = Digest.parse(f"{parts[2]}:{parts[3]}")
    except ValueError:
        return None
    return (parts[0], name, d, int(parts[4])) if is_valid_name(name) else None


def repo_name_from_path(path: str) -> str | None:
    """``.../repositories/<name>/_manifests`` -> ``<name>`` (None if not under repositories)."""
    prefix = REPOSITORIES + "/"
    if not path.startswith(prefix):
        return None
    return path[len(prefix):]


def digest_from_blob_dir(path: str) -> Digest | None:
    """``.../blobs/sha256/ab/abcd...`` -> Digest, or None if the path is not a blob dir."""
    parts = path.rsplit("/", 3)
    if len(parts) != 4:
        return None
    _, alg, prefix, hexpart = parts
    try:
        d = Digest.parse(f"{alg}:{hexpart}")
    except ValueError:
        return None
    return d if d.hex[:2] == prefix else None
