"""``meshops hub serve`` as one asyncio process: wiring and lifecycle.

Called by ``reconciler.cli.hub`` (``run(config)``; blocks until SIGTERM/SIGINT)
and by tests (``start(config)`` / ``Running.stop()``). It opens the feed store,
builds the ``Hub`` (``reconciler.hub.serve``), follows the branch
(``reconciler.hub.follow``), listens for HTTPS (``reconciler.hub.api`` with
``reconciler.hub.tls``), embeds the STUN responder
(``reconciler.stun.server.create_stun_endpoint``) and polls the store so
long-polls wake up when another replica accepts a report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ConfigError, MeshopsError
from reconciler.hub.feedstore import FeedStore
from reconciler.hub.follow import LocalFollower, RemoteFollower, is_remote
from reconciler.hub.serve import Hub
from reconciler.hub.snapshot import Pipeline, Snapshot
from reconciler.hub.tls import TlsManager

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/meshops/hub"


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``"0.0.0.0:8443"``, ``"[::]:8443"``, ``":8443"``, ``"host"`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, str(default_port)
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{text!r}: port must be a number") from None
    if not 0 <= number < 65536:
        raise ConfigError(f"{text!r}: port out of range")
    return host, number


@dataclass
class ServeConfig:
    repo: str
    branch: str = "main"
    listen: str = "0.0.0.0:8443"
    stun: str | None = None
    db: str | None = None  # default: sqlite:///STATE_DIR/hub.db
    poll: float | None = None  # default: 30 s local, 60 s remote
    gnupghome: str | None = None
    state_dir: str = DEFAULT_STATE_DIR
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_names: tuple[str, ...] = ()
    store_poll: float = 0.5  # how often to look for other replicas' feed revisions
    refresh: float = 6 * 3600  # re-publish the served commit (renewals, manifest not_after)
    plain_http: bool = False  # tests/behind a TLS-terminating proxy only: no mTLS then
    pipeline: Pipeline | None = None  # injected by tests; default: PublisherPipeline
    commit_key: str | None = None  # GPG key for the hub's enrollment commits (git commit -S)
    oidc_ca_file: str | None = None  # CA bundle for the orgs' OpenID issuers (default: system)
    now: Callable[[], float] = time.time

    def db_url(self) -> str:
        return self.db or f"sqlite:///{os.path.join(self.state_dir, 'hub.db')}"


@dataclass
class Running:
    hub: Hub
    port: int
    stun_port: int | None
    tls: TlsManager | None
    _stop: list[Callable[[], Any]] = field(default_factory=list)

    async def stop(self) -> None:
        for fn in reversed(self._stop):
            with contextlib.suppress(Exception):
                result = fn()
                if asyncio.iscoroutine(result):
                    await result


def _default_pipeline(config: ServeConfig, repo_path: str) -> Pipeline:
    from reconciler.hub.snapshot import PublisherPipeline

    return PublisherPipeline(repo_path, config.db_url(), config.gnupghome)


def small_tls_buffers(size: int = 32 * 1024) -> None:
    """asyncio's TLS transport gives every connection a 256 KiB read buffer
    (``asyncio.sslproto.SSLProtocol.max_size``, CPython 3.11+): 10,000 agent
    connections would pin 2.5 GiB. A TLS record is at most 16 KiB plus overhead,
    so 32 KiB reads lose nothing but memory."""
    import asyncio.sslproto

    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > size:
        asyncio.sslproto.SSLProtocol.max_size = size


async def tame_gc(freeze_every: float = 10.0, full_every: float = 1800.0) -> None:
    """Keep CPython's full (generation 2) collections short.

    With 10,000 open TLS connections the hub holds a few million GC-tracked
    objects, and one full collection stalls the event loop for ~1 s (measured:
    that was the whole p99 of ``scripts/bench hub_load``). Long-lived objects
    (connections, caches) are moved to the permanent generation every
    ``freeze_every`` seconds (``gc.freeze``), so automatic collections only scan
    young objects. Every ``full_every`` seconds everything is unfrozen once, so
    cycles among old objects are still reclaimed: one planned pause per interval."""
    import gc

    last_full = time.monotonic()
    while True:
        await asyncio.sleep(freeze_every)
        if time.monotonic() - last_full >= full_every:
            gc.unfreeze()
            gc.collect()
            last_full = time.monotonic()
        gc.freeze()


async def start(config: ServeConfig) -> Running:
    """Start every part of the hub; return a handle whose ``stop()`` undoes it."""
    from aiohttp import web

    small_tls_buffers()

    from reconciler.hub.api import make_app

    os.makedirs(config.state_dir, exist_ok=True)
    remote = is_remote(config.repo)
    poll = config.poll if config.poll is not None else (60.0 if remote else 30.0)
    store = await asyncio.to_thread(FeedStore, config.db_url())
    follower: LocalFollower | RemoteFollower
    hub_holder: list[Hub] = []

    async def on_commit(rev: str) -> None:
        await hub_holder[0].reconcile(rev)

    if remote:
        follower = RemoteFollower(config.repo, config.branch, on_commit,
                                  os.path.join(config.state_dir, "git"), poll)
        repo_path = follower.path
    else:
        follower = LocalFollower(config.repo, config.branch, on_commit, poll)
        repo_path = config.repo
    pipeline = config.pipeline or _default_pipeline(config, repo_path)
    tls = None if config.plain_http else TlsManager(
        config.tls_names + ("localhost",), cert_file=config.tls_cert, key_file=config.tls_key)

    def on_swap(snap: Snapshot) -> None:
        if tls is not None:
            tls.update({o.org: o.keys for o in snap.orgs.values()}, config.now())

    hub = Hub(pipeline=pipeline, store=store, now=config.now, on_swap=on_swap)
    hub_holder.append(hub)
    running = Running(hub=hub, port=0, stun_port=None, tls=tls)
    close_pipeline = getattr(pipeline, "close", None)
    if close_pipeline is not None:
        running._stop.append(close_pipeline)
    running._stop.append(hub.close)
    await hub.start()
    await follower.start()
    running._stop.append(follower.stop)

    async def store_poller() -> None:
        while True:
            await asyncio.sleep(config.store_poll)
            try:
                await hub.poll_store()
            except MeshopsError as exc:  # a flaky database must not stop the hub
                log.warning("store poll failed: %s", exc)

    poller = asyncio.get_running_loop().create_task(store_poller(), name="store-poller")
    running._stop.append(poller.cancel)

    async def refresher() -> None:
        # Without commits, certificates still come due for renewal and manifests
        # still expire (not_after), and the hub's own TLS certificates age: re-publish.
        while True:
            await asyncio.sleep(config.refresh)
            snap = hub.snapshot
            if snap is not None:
                await hub.reconcile(snap.commit, force=True)

    refresh_task = asyncio.get_running_loop().create_task(refresher(), name="refresher")
    running._stop.append(refresh_task.cancel)
    gc_task = asyncio.get_running_loop().create_task(tame_gc(), name="gc")
    running._stop.append(gc_task.cancel)

    from reconciler.hub.enroll import Enrollment
    from reconciler.identity.http import UrllibTransport

    enroll = Enrollment(
        repo_path=repo_path, push_url=config.repo, branch=config.branch,
        served_commit=lambda: hub.snapshot.commit if hub.snapshot else None, now=config.now,
        commit_key=config.commit_key, gnupghome=config.gnupghome,
        transport=UrllibTransport(ca_file=config.oidc_ca_file))
    app = make_app(hub, enroll=enroll)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    running._stop.append(runner.cleanup)
    host, port = parse_hostport(config.listen, 8443)
    site = web.TCPSite(runner, host, port, ssl_context=tls.front if tls else None,
                       backlog=4096, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await running.stop()
        raise ConfigError(f"--listen {config.listen}: {exc.strerror or exc}") from exc
    server = site._server  # aiohttp exposes the asyncio server only here
    sockets = getattr(server, "sockets", None) or []
    running.port = sockets[0].getsockname()[1] if sockets else port

    if config.stun:
        from reconciler.stun.server import create_stun_endpoint

        shost, sport = parse_hostport(config.stun, 3478)
        try:
            transport, _ = await create_stun_endpoint(asyncio.get_running_loop(), shost, sport)
        except ConfigError:
            await running.stop()
            raise
        running._stop.append(transport.close)
        sockname = transport.get_extra_info("sockname")
        running.stun_port = sockname[1] if sockname else sport
    return running


async def serve_forever(config: ServeConfig) -> None:
    running = await start(config)
    log.info("hub listening on port %s (stun %s)", running.port, running.stun_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.stop()


def run(config: ServeConfig) -> int:
    """Blocking entry point for the CLI."""
    asyncio.run(serve_forever(config))
    return 0
