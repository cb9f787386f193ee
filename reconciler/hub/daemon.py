"""``meshops hub serve`` as one asyncio process: wiring and lifecycle.

Called by ``reconciler.cli.hub`` (``run(config)``; blocks until SIGTERM/SIGINT)
and by tests (``start(config)`` / ``Running.stop()``). It opens the feed store,
builds the ``Hub`` (``reconciler.hub.serve``), follows the branch
(``reconciler.hub.follow``: every pass hands the head to ``Hub.reconcile``,
which also schedules retries and the periodic refresh), listens for HTTPS
(``reconciler.hub.api`` with ``reconciler.hub.tls``, behind the connection
guard of ``reconciler.hub.limits``), embeds the STUN responder
(``reconciler.stun.server.create_stun_endpoint``) and watches the store so
long-polls wake up when another replica accepts a report
(``reconciler.hub.notify``: PostgreSQL LISTEN/NOTIFY, with a periodic poll as
the safety net, and as the only way while no listener is up or on SQLite).

A local ``--repo`` path is made absolute at start-up: enrollment runs git in
a temporary worktree, where a relative push URL would name nothing.

The listener is ``loop.create_server`` with aiohttp's protocol factory wrapped
by ``ConnectionGuard`` (aiohttp's ``TCPSite`` takes neither a wrapped factory
nor a TLS handshake timeout); aiohttp's ``AppRunner`` still owns the
application's lifecycle and closes its connections at shutdown.
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
from typing import TYPE_CHECKING, Any

from reconciler.errors import ConfigError
from reconciler.hub.feedstore import FEED_CHANNEL, FeedListener, FeedStore
from reconciler.hub.follow import Head, LocalFollower, RemoteFollower, is_remote
from reconciler.hub.limits import ConnectionGuard, Limits, RefusalLog, anonymous_cap
from reconciler.hub.notify import StoreWatch
from reconciler.hub.serve import REFRESH_EVERY, RETRY_CAP, Hub
from reconciler.hub.snapshot import Pipeline, Snapshot
from reconciler.hub.tls import TlsManager, ip_literal
from reconciler.model.endpoint import Endpoint, IPAddress

if TYPE_CHECKING:
    from reconciler.hub.enroll import Enrollment

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/meshops/hub"


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``"0.0.0.0:8443"``, ``"[::]:8443"``, ``":8443"``, ``"host"``, ``"::"`` ->
    (host, port), parsed by ``Endpoint`` (no zone ids, names allowed). Port 0
    means any free port, as for ``bind``."""
    spec = text.strip()
    if spec.startswith(":") and spec.count(":") == 1:
        spec = "0.0.0.0" + spec  # ":8443": every IPv4 address
    if spec.startswith("["):
        has_port = "]:" in spec
    elif spec.count(":") > 1:  # a bare IPv6 address, "::"
        spec, has_port = f"[{spec}]", False
    else:
        has_port = ":" in spec
    if not has_port:
        spec = f"{spec}:{default_port}"
    any_port = spec.endswith(":0")  # port 0: any free port, as for bind()
    try:
        endpoint = Endpoint.parse(f"{spec[:-2]}:1" if any_port else spec, allow_names=True)
    except ValueError as exc:
        raise ConfigError(f"listen address {text!r}: {exc}") from None
    return endpoint.host, 0 if any_port else endpoint.port


def own_addresses(config: ServeConfig) -> frozenset[IPAddress]:
    """The hub's own addresses: no device may claim them as an endpoint. The
    ``--listen`` and ``--stun`` hosts (unless a wildcard) and every
    ``--tls-name`` that is an IP address (name the public address there when
    the hub listens on a wildcard or sits behind NAT)."""
    out: set[IPAddress] = set()
    for text, default in ((config.listen, 8443), (config.stun, 3478)):
        if text:
            ip = Endpoint(parse_hostport(text, default)[0], default).ip
            if ip is not None and not ip.is_unspecified:
                out.add(ip)
    for name in config.tls_names:
        ip = ip_literal(name)
        if ip is not None:
            out.add(ip)
    return frozenset(out)


@dataclass
class ServeConfig:
    repo: str
    branch: str | None = None  # None: the checked-out branch (a remote: its default branch)
    listen: str = "0.0.0.0:8443"
    stun: str | None = None
    db: str | None = None  # default: sqlite:///STATE_DIR/hub.db
    poll: float | None = None  # default: 30 s local, 60 s remote
    gnupghome: str | None = None
    state_dir: str = DEFAULT_STATE_DIR
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_names: tuple[str, ...] = ()
    store_poll: float = 0.5  # how often to look for other replicas' changes while not listening
    store_poll_listening: float = 5.0  # the same, a safety net, while LISTEN/NOTIFY is up
    store_listen: bool = True  # PostgreSQL: LISTEN for other replicas' changes
    refresh: float = REFRESH_EVERY  # re-publish the served commit (renewals, not_after)
    retry_cap: float = RETRY_CAP  # longest wait between attempts of a temporarily failing commit
    plain_http: bool = False  # tests/behind a TLS-terminating proxy only: no mTLS then
    limits: Limits = field(default_factory=Limits)  # timeouts and caps (reconciler.hub.limits)
    pipeline: Pipeline | None = None  # injected by tests; default: PublisherPipeline
    commit_key: str | None = None  # GPG key for the hub's enrollment commits (git commit -S)
    gate_signers: str | None = None  # --gate-signers FILE: commit gate on, these admins trusted
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
    guard: ConnectionGuard | None = None
    watch: StoreWatch | None = None
    enroll: Enrollment | None = None  # the enrollment service, as the API uses it
    _stop: list[Callable[[], Any]] = field(default_factory=list)

    async def stop(self) -> None:
        for fn in reversed(self._stop):
            with contextlib.suppress(Exception):
                result = fn()
                if asyncio.iscoroutine(result):
                    await result


def _default_pipeline(config: ServeConfig, repo_path: str) -> Pipeline:
    from reconciler.hub.gate import bootstrap
    from reconciler.hub.snapshot import PublisherPipeline

    gate = bootstrap(config.gate_signers, config.commit_key, config.gnupghome)
    return PublisherPipeline(repo_path, config.db_url(), config.gnupghome, gate=gate)


def small_tls_buffers(size: int = 8 * 1024) -> None:
    """asyncio's TLS transport gives every connection a 256 KiB read buffer
    (``asyncio.sslproto.SSLProtocol.max_size``, CPython 3.11+): 10,000 agent
    connections would pin 2.5 GiB. What agents send is small (GETs of a few
    hundred bytes, reports of a few KiB); a TLS record larger than one read
    (at most 16 KiB) is simply read in two or three. Measured per idle
    connection: 58 KB at 32 KiB, 42 KB at 16 KiB, 34 KB at 8 KiB
    (docs/benchmarks.md, "scale")."""
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
    # a relative checkout path would break enrollment pushes (run in a temporary worktree)
    repo = config.repo if remote else os.path.abspath(config.repo)
    poll = config.poll if config.poll is not None else (60.0 if remote else 30.0)
    store = await asyncio.to_thread(FeedStore, config.db_url())
    follower: LocalFollower | RemoteFollower
    hub_holder: list[Hub] = []

    async def on_head(head: Head) -> float | None:
        hub_holder[0].follow_state(head.branch, head.problem)
        return await hub_holder[0].reconcile(head.commit)

    if remote:
        follower = RemoteFollower(repo, config.branch, on_head,
                                  os.path.join(config.state_dir, "git"), poll)
        repo_path = follower.path
    else:
        follower = LocalFollower(repo, config.branch, on_head, poll)
        repo_path = repo
    pipeline = config.pipeline or _default_pipeline(config, repo_path)
    tls = None if config.plain_http else TlsManager(
        config.tls_names + ("localhost",), cert_file=config.tls_cert, key_file=config.tls_key)

    def on_swap(snap: Snapshot) -> None:
        if tls is not None:
            tls.update({o.org: o.keys for o in snap.orgs.values()}, config.now())

    hub = Hub(pipeline=pipeline, store=store, now=config.now, on_swap=on_swap,
              refresh_every=config.refresh, retry_cap=config.retry_cap,
              hub_addresses=own_addresses(config))
    hub_holder.append(hub)
    running = Running(hub=hub, port=0, stun_port=None, tls=tls)
    close_pipeline = getattr(pipeline, "close", None)
    if close_pipeline is not None:
        running._stop.append(close_pipeline)
    running._stop.append(hub.close)
    await hub.start()
    await follower.start()
    running._stop.append(follower.stop)

    running.watch = await _watch_store(config, hub, store)
    running._stop.append(running.watch.stop)

    gc_task = asyncio.get_running_loop().create_task(tame_gc(), name="gc")
    running._stop.append(gc_task.cancel)

    limits = config.limits
    refusals = RefusalLog(hub.metrics)
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(QuietLoopErrors(previous_handler))
    running._stop.append(lambda: loop.set_exception_handler(previous_handler))
    from reconciler.hub.enroll import Enrollment
    from reconciler.identity.http import UrllibTransport

    enroll = Enrollment(
        repo_path=repo_path, push_url=repo,
        branch=lambda: hub.status.branch or config.branch,
        served_commit=lambda: hub.snapshot.commit if hub.snapshot else None, now=config.now,
        commit_key=config.commit_key, gnupghome=config.gnupghome,
        transport=UrllibTransport(ca_file=config.oidc_ca_file))
    running.enroll = enroll
    app = make_app(hub, limits=limits, refusals=refusals, enroll=enroll)
    # keepalive_timeout: a connection must send its next complete request head
    # within idle_timeout (aiohttp arms it at connection start and after each answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
                           keepalive_timeout=limits.idle_timeout,
                           lingering_time=limits.lingering_time)
    await runner.setup()
    running._stop.append(runner.cleanup)
    host, port = parse_hostport(config.listen, 8443)
    assert runner.server is not None
    factory: Callable[[], asyncio.Protocol] = runner.server  # type: ignore[assignment]
    if tls is not None:  # plain HTTP is for a TLS-terminating proxy, which applies its own
        cap = anonymous_cap(limits, open_files_limit())
        running.guard = ConnectionGuard(limits, hub.metrics, refusals, cap)
        factory = running.guard.factory(factory)
    try:
        server = await loop.create_server(
            factory, host, port, ssl=tls.front if tls else None,
            ssl_handshake_timeout=limits.handshake_timeout if tls else None,
            ssl_shutdown_timeout=limits.handshake_timeout if tls else None,
            backlog=4096, reuse_address=True)
    except OSError as exc:
        await running.stop()
        raise ConfigError(f"--listen {config.listen}: {exc.strerror or exc}") from exc
    running._stop.append(server.close)  # runs before runner.cleanup (stops run reversed)
    sockets = server.sockets or []
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


async def _watch_store(config: ServeConfig, hub: Hub, store: FeedStore) -> StoreWatch:
    """Start the store watch: LISTEN/NOTIFY on PostgreSQL unless
    ``--no-store-listen``, and the periodic poll in every case."""
    listen = config.store_listen and store.dialect == "postgresql"
    own_pid = await hub.db(store.backend_pid) if listen else None
    assert own_pid is None or isinstance(own_pid, int)
    url = config.db_url()
    watch = StoreWatch(hub.poll_store, hub.metrics, fast=config.store_poll,
                       slow=config.store_poll_listening,
                       connect=(lambda: FeedListener(url)) if listen else None, own_pid=own_pid)
    await watch.start()
    if listen:
        log.info("store watch: LISTEN %s; periodic poll every %gs (every %gs while not "
                 "listening)", FEED_CHANNEL, config.store_poll_listening, config.store_poll)
    else:
        log.info("store watch: periodic poll every %gs", config.store_poll)
    return watch


def open_files_limit() -> int:
    """This process's soft limit of open files (``RLIMIT_NOFILE``)."""
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (systemd's default
    soft limit is 1,024; the unit sets 65,536) and return the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
    return soft


class QuietLoopErrors:
    """An event-loop exception handler for a server facing the internet: an
    ``OSError`` (``accept()`` out of file descriptors, a reset during a TLS
    handshake) becomes one log line per message and minute, without a
    traceback; anything else goes to the previous handler."""

    def __init__(self, previous: Any, window: float = 60.0) -> None:
        self._previous = previous
        self._window = window
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not isinstance(exc, OSError):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        message = str(context.get("message", "event loop error"))
        now = time.monotonic()
        last = self._last.get(message)
        if last is not None and now - last[0] < self._window:
            self._last[message] = (last[0], last[1] + 1)
            return
        if len(self._last) > 256:
            self._last.clear()
        self._last[message] = (now, 0)
        more = f" ({last[1]} more since the last line)" if last and last[1] else ""
        log.warning("%s: %s%s", message, exc, more)


async def serve_forever(config: ServeConfig) -> None:
    nofile = raise_open_files_limit()
    running = await start(config)
    log.info("hub listening on port %s (stun %s); open files limit %d, anonymous connections "
             "capped at %s", running.port, running.stun_port, nofile,
             running.guard.max_anonymous if running.guard else "- (plain HTTP)")
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
