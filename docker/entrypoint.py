#!/opt/registry/bin/python3
"""The image's entrypoint and its `registry` command (/usr/local/bin/registry, first on PATH).

Arguments follow registry:3's entrypoint, so the image is run the same way:

    (none)                               registry serve /etc/distribution/config.yml
    PATH.yml | PATH.yaml [...]           registry serve PATH ...
    serve | garbage-collect | -* [...]   registry ARGS   (help -> --help)
    registry ARGS                        the same as ARGS (`docker run IMAGE registry ...`)
    anything else                        that command (python3, registry-healthcheck, ...)

The image starts as root so that a volume registry:3 left root-owned works unchanged. As
root, and only for `serve` and `garbage-collect` on filesystem storage, every file and
directory under the storage root directory (read from the configuration the command names,
with the REGISTRY_* overrides) that is not owned by uid/gid 1000 is given to 1000:1000, one
walk that changes only what differs; a line on stderr says how many. Then, for every
command, supplementary groups are dropped and the process becomes uid/gid 1000 before it
execs, so the server, `docker exec <c> registry garbage-collect ...` and whatever else runs
through here never runs as root and never leaves root-owned files behind.

Started as any other user (`docker run --user 1000:1000`), nothing is chowned and nothing
is dropped: the data directory must then be writable already. A configuration that does
not load is not this script's business: ownership is left alone and the registry reports
the error itself (exit 2). A chown the volume refuses (read-only, NFS root squash) prints
one warning and the registry's own writability check says what is wrong.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

UID = GID = 1000  # the image's "registry" user (docker/rootfs.py writes it to /etc/passwd)
REGISTRY = "/opt/registry/bin/registry"  # the venv's console script: the real command
DEFAULT_CONFIG = "/etc/distribution/config.yml"  # registry:3's CMD
SUBCOMMANDS = frozenset({"serve", "garbage-collect"})
OWNING_COMMANDS = SUBCOMMANDS  # the ones that write to the storage
DEFAULT_ROOT = "/var/lib/registry"  # the filesystem driver's root when the config names none


def command_for(args: Sequence[str]) -> list[str]:
    """The command line registry:3's entrypoint rules make of the container's arguments."""
    args = list(args)
    if args and args[0] in ("registry", REGISTRY):
        args = args[1:]
        if not args:
            return [REGISTRY, "--help"]
    if not args:
        return [REGISTRY, "serve", DEFAULT_CONFIG]
    first = args[0]
    if first.endswith((".yml", ".yaml")):
        return [REGISTRY, "serve", *args]
    if first == "help":
        return [REGISTRY, "--help", *args[1:]]
    if first in SUBCOMMANDS or first.startswith("-"):
        return [REGISTRY, *args]
    return args


def config_path(command: Sequence[str]) -> str | None:
    """The configuration file `registry serve|garbage-collect ...` will read (its first
    argument that is not an option), else REGISTRY_CONFIGURATION_PATH, else None."""
    for arg in command[2:]:
        if not arg.startswith("-"):
            return arg
    return os.environ.get("REGISTRY_CONFIGURATION_PATH") or None


def storage_root(command: Sequence[str]) -> str | None:
    """The filesystem root directory the command's configuration stores data under; None
    for other drivers and for a configuration that does not load."""
    if len(command) < 2 or command[0] != REGISTRY or command[1] not in OWNING_COMMANDS:
        return None
    from registry.config import ConfigError, load_config

    try:
        config, _ = load_config(config_path(command), os.environ)
    except ConfigError:  # the registry itself reports it, with exit 2
        return None
    if config.storage.driver != "filesystem":
        return None
    return str(config.storage.params.get("rootdirectory") or DEFAULT_ROOT)


def give_to(root: str, uid: int, gid: int) -> int:
    """Chown every entry under `root` (itself included; symlinks themselves, never their
    targets) whose owner is not uid:gid; returns how many were changed. Raises OSError
    when a chown is refused. A missing root is created, as the registry would."""
    os.makedirs(root, exist_ok=True)
    changed = 0

    def fix(path: str) -> None:
        nonlocal changed
        st = os.lstat(path)
        if st.st_uid != uid or st.st_gid != gid:
            os.lchown(path, uid, gid)
            changed += 1

    fix(root)
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            fix(os.path.join(directory, name))
    return changed


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid with no supplementary groups (as setpriv --clear-groups would)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def main(argv: Sequence[str]) -> int:
    command = command_for(argv)
    if os.getuid() == 0:
        root = storage_root(command)
        if root is not None:
            try:
                changed = give_to(root, UID, GID)
            except OSError as exc:
                print(f"registry: cannot give {root} to uid {UID}: {exc}", file=sys.stderr)
            else:
                if changed:
                    print(
                        f"registry: gave {changed} files under {root} to uid {UID} "
                        "(written by another user, e.g. registry:3 as root)",
                        file=sys.stderr,
                    )
        drop_privileges(UID, GID)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"registry: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced the process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
