"""Hook for scenario 8: the push/pull scenarios with both registries on one S3 endpoint.

Not run by default (``default = False``); ``--only s3`` runs it once it is filled in. To do,
once our S3 driver lands:

1. ``prepare``: start moto's server mode on a free 127.0.0.1 port
   (``<venv>/bin/moto_server -H 127.0.0.1 -p PORT``), create one bucket per side.
2. Give ``servers.open_server`` a ``storage`` override: the same config schema with
   ``storage.s3: {region: us-east-1, bucket, regionendpoint: http://127.0.0.1:PORT,
   accesskey, secretkey, rootdirectory}`` instead of ``filesystem`` (distribution 2.8 uses
   path-style addressing whenever ``regionendpoint`` is set).
3. ``run``: reuse ``transfer.PUSH_MONOLITHIC``/``PUSH_STREAMED``/``PULL`` logic against it,
   and report the number of requests each registry sent to S3 (moto's
   ``/moto-api/data.json`` or its request log) next to MB/s.
"""

from __future__ import annotations

from pathlib import Path

from .core import Env, Figure, Profile, RoundResult, Skip
from .servers import REPO_ROOT, ServerSpec


def our_s3_driver() -> Path | None:
    for candidate in (REPO_ROOT / "registry/drivers/s3", REPO_ROOT / "registry/drivers/s3.py"):
        if candidate.exists():
            return candidate
    return None


class S3Scenario:
    name = "s3"
    title = "S3 push/pull (moto)"
    default = False

    def figures(self, profile: Profile) -> list[Figure]:
        return []

    def prepare(self, env: Env) -> None:
        if our_s3_driver() is None:
            raise Skip("our S3 driver does not exist yet")
        raise Skip("the S3 scenarios are not written yet: see the to-do in bench/s3.py")

    def run(self, env: Env, spec: ServerSpec) -> RoundResult:
        raise Skip("not implemented")
