"""Build the app from a Config and serve it with hypercorn's trio worker.

One process per worker (``http.workers``; 0 = one per CPU this process may use, after its
cgroup CPU quota (cpuquota.py), at most 2): the parent binds
the listening socket once, forks the workers, forwards SIGTERM/SIGINT to them and restarts
one that dies (supervisor.py). Each worker builds its own driver and app, so nothing is
shared but storage.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from typing import Any

import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from . import __version__
from .auth import Authenticator, build_authenticator
from .config import Config, ConfigError
from .cpuquota import auto_workers
from .drivers import make_driver
from .http import conn, connections, deadlines, h2proto, h11proto, listen, upgrades
from .http.app import AppOptions, RegistryApp
from .http.ratelimit import RateLimiter, build_ratelimiter
from .http.request import Request
from .http.tls import TLSConfigError, TLSSettings
from .notifications import build_notifier
from .ops import build_operations, parse_checks, parse_health
from .ops.debug import serve_debug
from .ops.redis import redis_client, start_redis
from .proxy import ProxyCache
from .storage.descriptor_cache import RedisDescriptors
from .storage.gc_service import OnlineGC
from .storage.manifest_urls import URLRules
from .storage.purge import UploadPurger
from .storage.store import Storage
from .supervisor import supervise
from .ui.access import Access, scheme_of
from .ui.service import UIService, build_ui
from .ui.static import load_assets

log = logging.getLogger("registry")

MAX_AUTO_WORKERS = 2  # the deployment budget is small; more workers cost memory
# Bytes hypercorn asks the socket for per read (its default is 64 KiB). Each read becomes
# one h11 event and one ASGI message, so per-byte Python cost of uploads falls with it
# (server CPU per 512 MiB push 2.2 s at 64 KiB, ~1.4 s at 256 KiB), while buffers held per
# uploading connection grow with it (+1.4 MiB each at 256 KiB). 128 KiB is the middle.
RECV_SIZE = 128 * 1024


def build_app(
    config: Config, *, multiprocess_dir: str | None = None, ui_static: Any = None
) -> RegistryApp:
    """The app for ``config``, built in one step from everything it uses; ``app.ops`` holds
    its metrics, health check and exchange listeners (``registry/ops/``). Raises ConfigError
    for unusable auth/policy/health/notification settings (run() checks them before
    forking). ``ui_static``: the web UI's files from this directory instead of the
    package's (tests)."""
    s = config.storage
    driver = make_driver(s.driver, s.params, redirect_disable=s.redirect_disable)
    notifier = build_notifier(config)
    redis = redis_client(config.redis)  # opens nothing yet (ops/redis.py)
    ops, driver = build_operations(
        config, driver, multiprocess_dir, (notifier.observe,) if notifier else (), redis
    )
    v = config.validation  # manifests.urls: the layer URLs pushes may carry
    urls = URLRules.compile(v.manifests_urls_allow, v.manifests_urls_deny, enabled=not v.disabled)
    storage = Storage(
        driver, tag_concurrency=s.tag_concurrencylimit, manifest_urls=urls,
        blob_descriptor_cache=s.blobdescriptorsize if s.blobdescriptor else None,
        descriptors=(
            RedisDescriptors(redis) if redis is not None and s.blobdescriptor == "redis" else None
        ),
        # validation.disabled turns the index check off too (the reference)
        index_children="none" if v.disabled else v.indexes_platforms,
        index_platforms=v.indexes_platformlist,
    )
    headers = tuple(
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, values in config.http.headers.items()
        for v in values
    )
    chunk_min = None
    if s.driver == "s3":
        chunk_min = int(s.params.get("chunksize") or 10 * 1024 * 1024)
    options = AppOptions(
        host=config.http.host,
        relative_urls=config.http.relativeurls,
        delete_enabled=s.delete_enabled,
        readonly=s.readonly,
        extra_headers=headers,
        chunk_min_length=chunk_min,
        access_log=not config.log.accesslog_disabled,
        catalog_max_entries=config.catalog_maxentries,
    )
    authenticate = build_authenticator(config)  # raises ConfigError (startup: see run)
    background = [notifier.start] if notifier else []
    if redis is not None:
        background.append(partial(start_redis, redis))
    if ops.health is not None:
        background.append(partial(_start, ops.health.serve))
    # Upload purging and online GC run in the lifespan nursery (storage/purge.py, gc_service.py).
    gc, purging = config.gc, s.uploadpurging
    collector = OnlineGC(
        storage.driver, scheduled=gc.online_enabled, interval=gc.interval,
        grace_period=gc.graceperiod, delete_untagged=gc.delete_untagged, settle=gc.settle,
        descriptors=storage.blobs.descriptors, redis=redis,
    )
    background.append(collector.start)
    if purging.enabled:
        background.append(UploadPurger(
            storage.driver, storage.uploads, age=purging.age, interval=purging.interval,
            dry_run=purging.dryrun, redis=redis,
        ).start)
    ui = (_build_ui(config, storage, authenticate, collector, ui_static)
          if config.ui_enabled else None)
    if ui is not None:
        background.append(ui.index.start)
    return RegistryApp(
        storage, options, background=background,
        authenticate=_gate(build_ratelimiter(config.raw), authenticate),
        can_pull=authenticate.can_pull if authenticate is not None else None,
        gc=collector,  # POST /admin/gc (http/admin.py)
        ops=ops,  # serve_worker serves its debug app beside the API
        # proxy / proxies: the pull-through cache (registry/proxy/), None without remotes
        proxy=ProxyCache(storage, config.proxies, metrics=ops.metrics) if config.proxies else None,
        ui=ui,  # the web UI (registry/ui/), None when ui.enabled is false
    )


def _build_ui(
    config: Config, storage: Storage, authenticate: Authenticator | None, gc: OnlineGC,
    static: Any,
) -> UIService:
    return build_ui(
        storage,
        access=Access(authenticate, scheme_of(config.auth)),
        gc=gc,
        delete_enabled=config.storage.delete_enabled,
        driver_name=config.storage.driver,
        version=__version__,
        assets=load_assets(static, prefix=config.http.prefix),
    )


async def _start(serve: Any, nursery: trio.Nursery) -> None:
    await nursery.start(serve)


def _gate(limiter: RateLimiter | None, authenticate: Authenticator | None) -> Any:
    """The app's pre-dispatch hook: rate limit first (cheap; slows password guessing before
    bcrypt runs), then authentication (which sets ``req.user``)."""
    if limiter is None and authenticate is None:
        return None

    async def gate(req: Request) -> None:
        if limiter is not None:
            limiter.check(req)
        if authenticate is not None:
            await authenticate(req)

    return gate


def connection_limits(config: Config) -> deadlines.ConnLimits:
    """The http.headertimeout/bodytimeout/minbodyrate/maxconnections settings; a cap of 0
    becomes one derived from this process's open-file limit (cli.py raised it already)."""
    h = config.http
    cap = h.maxconnections or deadlines.default_max_connections(
        resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    )
    return deadlines.ConnLimits(h.headertimeout, h.bodytimeout, h.minbodyrate, cap)


def hypercorn_config(config: Config) -> HyperConfig:
    """Hypercorn's settings for ``config``; loads the TLS files (ConfigError if unusable)."""
    hc = conn.ServerConfig(connection_limits(config))
    hc.bind = [listen.bind_address(config.http.addr)]  # run() listens dual-stack
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 75  # docker keeps connections open between layer uploads
    # Seconds any one read may wait (hypercorn's); request heads and bodies have tighter
    # deadlines (http.headertimeout, http.bodytimeout: http/conn.py).
    hc.read_timeout = 120
    hc.graceful_timeout = config.http.draintimeout or 10.0
    hc.h11_max_incomplete_size = 64 * 1024  # header block limit
    hc.backlog = 1024  # 128 clients connecting at once must not wait for SYN retries
    # Body pieces queued between hypercorn and the app per request. At least 2: a request
    # that ends with no body read still holds hypercorn's end-of-body message when the
    # response ends, and hypercorn then queues a disconnect message too; with room for one
    # only, that blocks forever (app.py drains bodies it did not read for the same reason).
    hc.max_app_queue_size = 2
    hc.include_server_header = False
    hc.include_date_header = True
    # HTTP/2: over TLS by ALPN unless http.http2.disabled; cleartext only with http.h2c.enabled
    # (both the reference's keys). Hostile h2 traffic is screened by http/h2proto.py.
    hc.alpn_protocols = ["http/1.1"] if config.http.http2_disabled else ["h2", "http/1.1"]
    h = config.http
    if h.tls_certificate and h.tls_key:
        try:
            hc.use_tls(TLSSettings(
                h.tls_certificate, h.tls_key, clientcas=h.tls_clientcas,
                clientauth=h.tls_clientauth, minimumtls=h.tls_minimumtls,
                ciphersuites=h.tls_ciphersuites,
            ))
        except TLSConfigError as e:
            raise ConfigError(str(e)) from None
    hc.h2c_enabled = config.http.h2c_enabled
    hc.root_path = config.http.prefix  # the app routes below it (http/app.py)
    tune_hypercorn()
    return hc


def tune_hypercorn() -> None:
    """Process-wide hypercorn settings that are not Config options: the socket read size
    (a module constant, read at every read), the HTTP/1.1 and HTTP/2 protocol classes
    (h11proto, h2proto), the per-connection TCP server with its limits (conn) and the
    per-connection guard (connections; installed last, so it wraps conn's server)."""
    hypercorn.trio.tcp_server.MAX_RECV = RECV_SIZE  # type: ignore[attr-defined]
    h11proto.install()
    conn.install()
    h2proto.install()
    connections.install()


def worker_count(config: Config) -> int:
    if config.http.workers > 0:
        return config.http.workers
    return auto_workers(MAX_AUTO_WORKERS)  # one worker in a 0.25-CPU container


async def _shutdown_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def serve_worker(
    config: Config, hc: HyperConfig, sockets: Any, debug_sockets: Any = None,
    multiprocess_dir: str | None = None, *, ready: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; ``ready()`` is called once the app has started and the
    listeners accept (the supervisor tells start-up failures from later crashes by it)."""
    app = build_app(config, multiprocess_dir=multiprocess_dir)

    async def serve(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await worker_serve(
            wrap_app(upgrades.refuse_websockets(app), hc.wsgi_max_body_size, "asgi"),
            hc,
            sockets=sockets,
            shutdown_trigger=_shutdown_on_signal,
            task_status=task_status,
        )
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        if debug_sockets is not None:  # the debug listener (http.debug.addr), same lifetime
            # After the app's start-up, which ran every health check's first probe: until
            # then this worker's /debug/health would say {} for a bucket that is missing.
            await nursery.start(partial(serve_debug, app.ops.debug_app(), debug_sockets))
        if ready is not None:
            ready()


def _check_startup(config: Config) -> None:
    """Everything build_app would refuse, checked once before binding or forking."""
    if config.storage.driver == "s3":
        from .drivers.s3.params import S3ConfigError, S3Params

        try:
            S3Params.parse(config.storage.params)
        except S3ConfigError as e:  # names the storage.s3 key; never contacts S3
            raise ConfigError(str(e)) from None
    build_authenticator(config)
    build_ratelimiter(config.raw)
    build_notifier(config)
    parse_health(config.health)
    parse_checks(config.health)
    redis_client(config.redis)  # loads redis.tls's files; never connects


def _debug_sockets(config: Config) -> Any:
    if not config.http.debug_addr:
        return None
    dhc = HyperConfig()
    debug = listen.create_sockets(dhc, config.http.debug_addr)  # dual-stack, as Go's
    for sock in debug.insecure_sockets:
        sock.listen(dhc.backlog)
        host, port, *_ = sock.getsockname()
        log.info("debug listener on http://%s", listen.display(host, port))
    return debug


def run(config: Config) -> int:
    try:  # fail before forking: a missing htpasswd file is a one-line startup error
        _check_startup(config)
        hc = hypercorn_config(config)
    except ConfigError as e:
        print(f"registry: configuration error: {e}", file=sys.stderr)
        return 2
    sockets = listen.create_sockets(hc, config.http.addr)  # ":5000": IPv4 and IPv6, as Go's
    for sock in sockets.secure_sockets + sockets.insecure_sockets:
        sock.listen(hc.backlog)
    bound = [s.getsockname() for s in sockets.secure_sockets + sockets.insecure_sockets]
    scheme = "https" if sockets.secure_sockets else "http"
    n = worker_count(config)
    for host, port, *_ in bound:
        log.info("registry listening on %s://%s (%d worker%s)", scheme, listen.display(host, port),
                 n, "s" * (n > 1))
    if config.ui_enabled and bound:
        # A URL a browser on this machine can open (a wildcard address cannot be opened).
        host, port = bound[0][0], bound[0][1]
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        log.info("web UI: %s://%s%s/ui/", scheme, listen.display(shown, port),
                 config.http.prefix.rstrip("/"))
    debug = _debug_sockets(config)
    multiprocess_dir = None
    if config.http.debug_prometheus_enabled and n > 1:
        # Workers share one debug socket, so any of them may answer a scrape: they keep
        # their metrics in files here (prometheus-client's multiprocess mode, see ops/metrics.py).
        # prometheus_client reads this variable when a worker creates its metrics.
        multiprocess_dir = tempfile.mkdtemp(prefix="registry-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
    try:
        # Even one worker runs in a child: a worker that dies is restarted (supervisor.py).
        return supervise(
            n, partial(serve_worker, config, hc, sockets, debug, multiprocess_dir),
            on_exit=partial(_worker_gone, multiprocess_dir),
            on_stop=partial(_close_listeners, sockets),
            drain_s=hc.graceful_timeout,
        )
    finally:
        if multiprocess_dir:
            shutil.rmtree(multiprocess_dir, ignore_errors=True)


def _close_listeners(sockets: Any) -> None:
    for sock in sockets.secure_sockets + sockets.insecure_sockets:
        sock.close()


def _worker_gone(multiprocess_dir: str | None, pid: int) -> None:
    if multiprocess_dir:  # drop a dead worker's in-flight gauges from the sums
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, multiprocess_dir)
