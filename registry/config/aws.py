"""AWS credentials for ``storage.s3`` when the config names no keys: the sources of the AWS
SDK's default chain that the reference (aws-sdk-go v1) consults, in its order.

1. ``storage.s3.accesskey`` + ``secretkey`` (+ ``sessiontoken``) in the config: used as is.
2. The environment: ``AWS_ACCESS_KEY_ID`` (or ``AWS_ACCESS_KEY``) and
   ``AWS_SECRET_ACCESS_KEY`` (or ``AWS_SECRET_KEY``), with ``AWS_SESSION_TOKEN``.
3. The shared credentials file: ``AWS_SHARED_CREDENTIALS_FILE``, else
   ``$HOME/.aws/credentials``; the profile ``AWS_PROFILE``, else ``AWS_DEFAULT_PROFILE``,
   else ``default``; keys ``aws_access_key_id``, ``aws_secret_access_key``,
   ``aws_session_token``.

Not consulted: the EC2 instance metadata service and the ECS/EKS container endpoints
(they need a network call at start-up and a refresh loop), ``~/.aws/config`` profiles
(``AWS_SDK_LOAD_CONFIG``), SSO and ``credential_process``.

Pure apart from reading the one file; the environment is a parameter (cli.py passes it:
nothing below the CLI reads ``os.environ``).
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .model import ConfigError

KEYS = ("accesskey", "secretkey", "sessiontoken")


def _env(environ: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return ""


def from_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """Keys from ``AWS_*`` variables, or None when either key is missing."""
    access = _env(environ, "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY")
    secret = _env(environ, "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY")
    if not access or not secret:
        return None
    found = {"accesskey": access, "secretkey": secret}
    token = _env(environ, "AWS_SESSION_TOKEN")
    if token:
        found["sessiontoken"] = token
    return found


def credentials_file(environ: Mapping[str, str]) -> Path | None:
    """The shared credentials file's path (not checked for existence)."""
    explicit = _env(environ, "AWS_SHARED_CREDENTIALS_FILE")
    if explicit:
        return Path(explicit).expanduser()
    home = _env(environ, "HOME")
    return Path(home) / ".aws" / "credentials" if home else None


def from_shared_file(environ: Mapping[str, str]) -> dict[str, str] | None:
    """Keys of the chosen profile in the shared credentials file; None when there is no
    file or no such profile. Raises ConfigError for a file that cannot be parsed, or a
    profile without both keys (the SDK refuses those too)."""
    path = credentials_file(environ)
    if path is None or not path.is_file():
        return None
    profile = _env(environ, "AWS_PROFILE", "AWS_DEFAULT_PROFILE") or "default"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"AWS shared credentials file {path}: {e}".splitlines()[0]) from None
    if not parser.has_section(profile):
        return None
    section = parser[profile]
    access = section.get("aws_access_key_id", "").strip()
    secret = section.get("aws_secret_access_key", "").strip()
    if not access or not secret:
        raise ConfigError(
            f"AWS shared credentials file {path}: profile {profile!r} needs both"
            " aws_access_key_id and aws_secret_access_key"
        )
    found = {"accesskey": access, "secretkey": secret}
    token = section.get("aws_session_token", "").strip()
    if token:
        found["sessiontoken"] = token
    return found


def fill_s3_credentials(tree: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Give ``storage.s3`` keys from the chain above when it has no accesskey/secretkey.

    Changes ``tree`` in place; does nothing for another driver or when both keys are
    configured (as the reference: static keys need both). Leaves the section alone when
    no source has keys: the S3 options check then says what is missing.
    """
    storage = tree.get("storage")
    s3 = storage.get("s3") if isinstance(storage, dict) else None
    if not isinstance(s3, dict):
        return
    present = {str(k).lower(): v for k, v in s3.items() if v not in (None, "")}
    if "accesskey" in present and "secretkey" in present:
        return
    found = from_environment(environ) or from_shared_file(environ)
    if found is None:
        return
    for key in [k for k in s3 if str(k).lower() in KEYS]:
        del s3[key]  # no mixing: a config token does not belong to other keys
    s3.update(found)
