"""Three replicas on one bucket behind haproxy sharing one redis-server (``redis:`` and
``storage.cache.blobdescriptor: redis``, issue 17 item 1): Redis stopped and started in the
middle of a load keeps every push and pull succeeding (from storage while it is down)."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import pytest
from scaleout_support import deployment, redis_supported
from test_scaleout import CHUNK, chunked_upload, client, pull_and_verify, push_manifest

pytestmark = pytest.mark.e2e

WORKERS = 4  # client threads
ROUNDS = 12  # pushes (each then pulled) per client thread
OUTAGE_AT = 4  # the round after which thread 0 stops Redis; it starts it again 4 rounds on


def test_redis_stopped_and_started_mid_load_pushes_and_pulls_keep_succeeding(
    tmp_path: Path,
) -> None:
    if not redis_supported():
        pytest.skip("this checkout's config refuses redis (issue 17 item 1 not merged)")
    shared = secrets.token_bytes(2 * CHUNK)
    errors: list[Exception] = []
    pushed: dict[tuple[str, str], bytes] = {}
    outage = {"stopped": threading.Event(), "started": threading.Event()}

    with deployment(tmp_path, storage="s3", redis=True) as deploy:
        assert deploy.redis is not None
        redis = deploy.redis

        def work(n: int) -> None:
            try:
                with client(deploy) as http:
                    for i in range(ROUNDS):
                        if n == 0 and i == OUTAGE_AT:
                            redis.stop()
                            outage["stopped"].set()
                        if n == 0 and i == 2 * OUTAGE_AT:
                            redis.start()
                            outage["started"].set()
                        repo, tag = f"redis/r{n}", f"t{i}"
                        config = f'{{"os":"linux","n":"{n}-{i}"}}'.encode()
                        layers = [shared, secrets.token_bytes(CHUNK)]
                        for blob in [config, *layers]:
                            chunked_upload(http, repo, blob)
                        pushed[repo, tag] = push_manifest(http, repo, tag, config, layers)
                        pull_and_verify(http, repo, tag, pushed[repo, tag])
            except (AssertionError, OSError) as exc:  # the main thread reports it
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not errors, errors
        assert outage["stopped"].is_set() and outage["started"].is_set()
        with client(deploy) as http:
            for (repo, tag), manifest in pushed.items():
                pull_and_verify(http, repo, tag, manifest)
        assert len(pushed) == WORKERS * ROUNDS
        assert redis.dbsize() > 0, "the replicas did not use Redis after it came back"
        down = [
            r.index for r in deploy.replicas if "redis: " in r.log() and "unavailable" in r.log()
        ]
        assert down, "no replica noticed the outage"
