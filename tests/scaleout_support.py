"""The scale-out deployment for pytest (issue 17): N replicas of ``python -m registry serve``
on one storage (one moto bucket with signature checking on, or one shared directory) behind
haproxy, optionally with redis-server. The processes are tests/scalekit.py's; this module
adds what is pytest's:

- :func:`deployment` is a context manager (use it in the test body, so a failure carries the
  replicas' and haproxy's log tails as a note) that requires haproxy (and redis-server when
  asked: a failure under CI=true, a skip elsewhere), makes a fresh bucket for ``"s3"``, and
  on a clean exit fails when a replica's log shows a traceback or a 500 answer.
- :func:`redis_supported` says whether this checkout's config accepts the ``redis:``
  section (issue 17 item 1, another branch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from e2e_support import free_port, ours_log_problem, require_tool
from s3_support import moto_server

try:
    from tests import scalekit
except ImportError:
    import scalekit  # type: ignore[no-redef]

Deployment = scalekit.Deployment
Replica = scalekit.Replica
STORAGES = ("s3", "fs")


def redis_supported() -> bool:
    """True once ``redis.addrs`` is a supported key of registry/config/keys.py."""
    from registry.config import keys

    return any(k.key == "redis.addrs" and k.status != keys.REFUSED for k in keys.KEYS)


@contextlib.contextmanager
def deployment(
    tmp_path: Path, *, storage: str = "s3", replicas: int = 3, redis: bool = False,
    check_logs: bool = True, **options: Any,
) -> Iterator[scalekit.Deployment]:  # fmt: skip
    """Start the deployment under ``tmp_path/deploy-<storage>``; see the module docstring."""
    require_tool("haproxy", "apt-get install haproxy")
    if redis:
        require_tool("redis-server", "apt-get install redis-server")
    s3_params = None
    if storage == "s3":
        server = moto_server()
        s3_params = server.params(server.new_bucket())
    directory = tmp_path / f"deploy-{storage}"
    with scalekit.open_deployment(
        directory, replicas=replicas, storage=storage, s3_params=s3_params, redis=redis,
        free_port=free_port, **options,
    ) as deploy:  # fmt: skip
        try:
            yield deploy
        except BaseException as exc:
            exc.add_note(deploy.logs())
            raise
    if check_logs:
        for replica in deploy.replicas:
            problem = ours_log_problem(replica.log())
            assert problem is None, f"replica {replica.index} log shows {problem}:\n{deploy.logs()}"
