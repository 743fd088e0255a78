"""Gather a minimal root filesystem for the final ``scratch`` stage of docker/Dockerfile.

Usage (in the build stage, as root): ``python3 docker/rootfs.py VENV ROOTFS``

Copies into ROOTFS, at their own paths: the interpreter the venv runs on (every symlink on
the way), its standard library less what a server never imports (tests, IDLE, tkinter,
ensurepip, ...), the venv less pip/setuptools, every shared library those ELF files load
(found with ``ldd``, plus libgcc_s, which glibc loads on demand to unwind threads), the
dynamic loader's cache for exactly those libraries, the CA bundle OpenSSL looks for (or
certifi's, when the base has none), and the few files a process expects: /etc/passwd and
/etc/group with the ``registry`` user (uid/gid 1000), /tmp, and /var/lib/registry owned by
that user. Precompiles every module so a non-root process never needs to write bytecode.

Works on the official python:3.11-slim image (interpreter in /usr/local) and on Debian's
python3 (in /usr). Raises SystemExit with a message when something it needs is missing.
"""

from __future__ import annotations

import compileall
import os
import re
import shutil
import ssl
import subprocess
import sys
import sysconfig
from pathlib import Path

UID = GID = 1000  # the image's USER; documented in the README (chown for registry:3 data)
STDLIB_SKIP = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "venv",
        "site-packages",
        "dist-packages",
        "__phello__",
    }
)
STDLIB_SKIP_PREFIX = "config-3."  # config-3.11-<arch>: static libpython and Makefile, for C
# Extension modules a server never imports, whose libraries cost ~6 MB (Berkeley DB,
# sqlite, NIS with Kerberos, readline and curses).
DYNLOAD_SKIP = re.compile(r"^(_sqlite3|_dbm|_gdbm|nis|readline|_curses|_curses_panel|_tkinter)\.")
VENV_SKIP = re.compile(
    r"^(pip|setuptools|wheel|pkg_resources|_distutils_hack)(-.*\.dist-info)?$"
    r"|^distutils-precedence\.pth$"
)
# ldd lines: "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)" and
# "/lib64/ld-linux-x86-64.so.2 (0x...)".
LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")
ON_DEMAND_LIBS = ("libgcc_s.so.1",)  # dlopen'ed by glibc (pthread cancellation/unwinding)


def copy_path(src: Path, root: Path) -> None:
    """Copy `src` to root/src, recreating each symlink on its way (directories and the
    file itself) as a symlink and copying the final file with its mode and mtime."""
    src = Path(os.path.abspath(src))
    current = Path("/")
    parts = src.parts[1:]
    for i, part in enumerate(parts):
        current = current / part
        dest = root / current.relative_to("/")
        if current.is_symlink():
            if not dest.is_symlink():
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.exists():
                    raise SystemExit(f"rootfs: {dest} exists and is not a symlink")
                os.symlink(os.readlink(current), dest)
            target = Path(os.path.normpath(current.parent / os.readlink(current)))
            copy_path(target / Path(*parts[i + 1 :]) if i + 1 < len(parts) else target, root)
            return
        if i + 1 == len(parts):
            if current.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(current, dest)


def copy_tree(src: Path, root: Path, skip: re.Pattern[str] | frozenset[str]) -> None:
    """Copy the directory `src` to root/src; symlinks inside it are copied as files (a
    dangling one is dropped); entries whose name is in `skip` are left out."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        if isinstance(skip, frozenset):
            dynload = os.path.basename(directory) == "lib-dynload"
            return {
                n
                for n in names
                if n in skip
                or n.startswith(STDLIB_SKIP_PREFIX)
                or (dynload and DYNLOAD_SKIP.match(n))
            }
        return {n for n in names if skip.match(n)}

    copy_path(src.parent, root)
    shutil.copytree(
        src,
        root / src.relative_to("/"),
        symlinks=False,
        ignore=ignore,
        ignore_dangling_symlinks=True,
        dirs_exist_ok=True,
    )


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed_libraries(files: list[Path]) -> set[Path]:
    """Every shared library (and the loader) that `files` load, per ldd."""
    found: set[Path] = set()
    for path in files:
        proc = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
        if "not found" in proc.stdout:
            raise SystemExit(f"rootfs: {path} needs a library the base lacks:\n{proc.stdout}")
        found.update(Path(m.group(1)) for m in LDD_PATH.finditer(proc.stdout))
    return found


def on_demand_libraries() -> set[Path]:
    proc = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True)
    found = set()
    for name in ON_DEMAND_LIBS:
        match = re.search(
            rf"^\s*{re.escape(name)} \(libc6,[^)]*\) => (\S+)$", proc.stdout, re.MULTILINE
        )
        if match:
            found.add(Path(match.group(1)))
    return found


def copy_ca_bundle(root: Path, venv: Path) -> None:
    """Make OpenSSL's default CA file exist in the image (S3/R2 over https needs it)."""
    cafile = Path(ssl.get_default_verify_paths().openssl_cafile)
    if cafile.exists():
        copy_path(cafile, root)
        return
    bundles = sorted(venv.glob("lib/python*/site-packages/certifi/cacert.pem"))
    if not bundles:
        raise SystemExit(f"rootfs: no CA bundle at {cafile} and no certifi in {venv}")
    dest = root / cafile.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(bundles[0], dest)


def write_system_files(root: Path) -> None:
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"registry:x:{UID}:{GID}:registry:/var/lib/registry:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\nregistry:x:{GID}:\nnogroup:x:65534:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    data = root / "var/lib/registry"
    data.mkdir(parents=True, exist_ok=True)
    os.chown(data, UID, GID)


def write_loader_cache(root: Path, libraries: set[Path]) -> None:
    """ld.so.cache for the copied libraries, so directories outside the loader's defaults
    (/usr/local/lib for the official image's libpython) are found without /etc/ld.so.conf."""
    dirs = sorted({str(p.parent) for p in libraries})
    (root / "etc/ld.so.conf").write_text("".join(f"{d}\n" for d in dirs))
    subprocess.run(["ldconfig", "-r", str(root)], check=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit("usage: rootfs.py VENV ROOTFS")
    venv, root = Path(argv[0]), Path(argv[1])
    if root.exists():
        raise SystemExit(f"rootfs: {root} exists")
    root.mkdir(parents=True)
    interpreter = venv / "bin/python3"
    if not interpreter.exists():
        raise SystemExit(f"rootfs: {interpreter} missing: not a venv?")

    copy_path(interpreter, root)  # bin/python3 -> /usr/bin/python3 -> python3.11
    paths = sysconfig.get_paths()
    stdlibs = sorted({Path(paths["stdlib"]), Path(paths["platstdlib"])})
    for stdlib in stdlibs:
        copy_tree(stdlib, root, STDLIB_SKIP)
    # The venv's own lib/, bin/ and pyvenv.cfg; site-packages without the installers.
    (root / venv.relative_to("/")).mkdir(parents=True, exist_ok=True)
    for entry in sorted(venv.iterdir()):
        if entry.is_dir() and entry.name.startswith("lib") and not entry.is_symlink():
            copy_tree(entry, root, VENV_SKIP)
        elif entry.is_dir() and entry.name == "bin":
            dest = root / entry.relative_to("/")
            dest.mkdir(exist_ok=True)
            for script in sorted(entry.iterdir()):
                if script.name.startswith(("pip", "activate", "Activate")):
                    continue
                if (dest / script.name).is_symlink():  # python3, copied with the interpreter
                    continue
                if script.is_symlink():
                    os.symlink(os.readlink(script), dest / script.name)
                else:
                    shutil.copy2(script, dest / script.name)
        else:
            copy_path(entry, root)

    elves = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p)]
    # ldd must run on the original files: $ORIGIN rpaths (wheels' .libs dirs) resolve there.
    originals = [Path("/") / p.relative_to(root) for p in elves]
    libraries = needed_libraries(originals) | on_demand_libraries()
    for lib in sorted(libraries):
        copy_path(lib, root)
    write_system_files(root)
    write_loader_cache(root, {Path(os.path.realpath(p)) for p in libraries} | libraries)
    copy_ca_bundle(root, venv)

    # Bytecode for everything, recorded under the final paths (mtimes were preserved).
    for tree in [*stdlibs, venv]:
        ok = compileall.compile_dir(
            str(root / tree.relative_to("/")),
            quiet=1,
            workers=0,
            stripdir=str(root),
            prependdir="/",
        )
        if not ok:
            raise SystemExit(f"rootfs: compiling {tree} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
