"""Parameter sections: a storage driver's (``storage.<driver>``) or an auth scheme's
(``auth.<scheme>``) free-form parameters, which their owners parse.

Each driver parses its own parameters when it is built (``S3Params.parse`` in
drivers/s3/params.py, ``FilesystemDriver.from_params``; ``server._check_startup`` runs the
S3 one before binding). Config keeps two pieces of that knowledge because they must act
while the YAML text still exists and config may not import the drivers (it is a leaf):

- which parameters are strings even when YAML reads a number (an all-digit secret key keeps
  its text, ``0042`` stays "0042"): freeze() turns YAML numbers into plain ints;
- the filesystem root default and the root / thread-count checks, so that ``registry serve``
  and ``garbage-collect`` refuse a bad value with one line at load time (the filesystem
  driver's own ``from_params`` only fills in defaults).

tests/test_config_package.py checks the S3 list against the driver's own ``KNOWN`` keys.
"""

from __future__ import annotations

from typing import Any

from .loader import as_text
from .model import FILESYSTEM_ROOTDIRECTORY, ConfigError
from .reader import Node

S3_STRING_PARAMS = frozenset(
    {
        "accesskey",
        "secretkey",
        "sessiontoken",
        "region",
        "regionendpoint",
        "bucket",
        "rootdirectory",
        "storageclass",
        "keyid",
        "objectacl",
        "useragent",
        "redirectendpoint",
    }
)
FILESYSTEM_STRING_PARAMS = frozenset({"rootdirectory"})
AUTH_STRING_PARAMS = frozenset({"realm", "service", "issuer", "path", "rootcertbundle"})
# Applied to every parameter section alike (a key means the same wherever it appears).
STRING_PARAMS = S3_STRING_PARAMS | FILESYSTEM_STRING_PARAMS | AUTH_STRING_PARAMS
# Parameter sections whose keys are read case-insensitively (lowercased) by the unknown-key
# check; storage.s3 and auth.token are free-form here: their owners read them.
PARAM_SECTIONS = frozenset(
    {"storage.filesystem", "storage.inmemory", "auth.htpasswd", "auth.silly"}
)


def read_params(section: Node, key: str) -> dict[str, Any]:
    """A driver's or auth scheme's parameters: keys lowercased, string-like ones as text.
    Raises ConfigError if the section is not a mapping."""
    params = section.section(key)
    return {
        k.lower(): (as_text(v) if k.lower() in STRING_PARAMS and as_text(v) is not None else v)
        for k, v in params.data.items()
    }


def check_filesystem_params(params: dict[str, Any]) -> None:
    """Fill in and check ``storage.filesystem`` in place: rootdirectory defaults to the
    reference's /var/lib/registry and must not be empty; maxthreads, if given, is an
    integer of at least 1. Raises ConfigError naming the key."""
    fs = Node(params, "storage.filesystem")
    params["rootdirectory"] = fs.get_str("rootdirectory", FILESYSTEM_ROOTDIRECTORY)
    if not params["rootdirectory"]:
        raise ConfigError("storage.filesystem.rootdirectory: must not be empty")
    if "maxthreads" in params:
        params["maxthreads"] = fs.get_int("maxthreads", 100, minimum=1)
