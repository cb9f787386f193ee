"""``meshops agent init|enroll|rotate-key|apply|run|status|render``: the device side.

Handlers import ``reconciler.agent`` lazily, so other commands never pay for
it, and ``agent apply`` imports only what a no-op pass needs (it runs every
30 s from a timer: see docs/benchmarks.md, "agent"). Exit codes: 0 converged,
1 refused or permanent error, 2 usage, 75 temporary failure (retry).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_CONFIG = "/etc/meshops/agent.json"


def register(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="converge this device's WireGuard interface")
    asub = agent.add_subparsers(dest="agent_command", metavar="ACTION", parser_class=type(agent))
    asub.required = True

    p = asub.add_parser(
        "init", help="make device keys, write the agent config, print the device YAML",
        description="Generate the WireGuard (X25519) and identity (Ed25519) keys on this "
        "device (files mode 0600, never printed), write the agent config, pin the trust "
        "anchors, and print the device YAML (public keys only) for a pull request.")
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True, help="device name (a DNS label)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hub", metavar="URL", help="hub base URL (https://hub:8443)")
    src.add_argument("--manifest-url", metavar="URL",
                     help="static manifest: file:///path/manifest.json or https://…")
    p.add_argument("--trust", required=True, metavar="TRUST.json",
                   help="trust anchors to pin (from `meshops hub publish`)")
    _config_arg(p)
    p.add_argument("--backend", choices=("userspace", "kernel"), default="userspace")
    p.add_argument("--interface", help="interface name (default mo-ORG; unique per host)")
    p.add_argument("--state-dir", help="state directory (default /var/lib/meshops)")
    p.add_argument("--key-dir", help="where the key files go (default: the config's directory)")
    p.add_argument("--netns", help="network namespace of the interface (lab, tests)")
    p.add_argument("--listen-port", type=int, help="override the org's listen port")
    p.add_argument("--stun", action="append", metavar="HOST:PORT",
                   help="STUN server for endpoint discovery; repeat (enables discovery; "
                        "overrides mesh.yaml's stun_servers)")
    p.add_argument("--discover", action="store_true",
                   help="run STUN discovery with mesh.yaml's stun_servers from the signed "
                        "manifest (implied by --stun)")
    _rotation_arg(p)
    p.add_argument("--force", action="store_true", help="replace existing keys and config")
    p.set_defaults(handler=init)

    p = asub.add_parser(
        "enroll", help="log in with the org's identity provider and enroll this device",
        description="Make the device keys and the agent config as `agent init` does, log in "
        "with the org's OpenID provider (device authorization grant: open the printed URL "
        "and enter the code), then send the hub the public keys, signed with the new "
        "identity key. The hub pushes a branch enroll/ORG/NAME for review (merging it is "
        "the approval), or commits the device itself when the org auto-approves you.")
    p.add_argument("--hub", required=True, metavar="URL", help="hub base URL (https://hub:8443)")
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True, help="device name (a DNS label)")
    p.add_argument("--trust", required=True, metavar="TRUST.json",
                   help="trust anchors to pin (from `meshops hub publish`)")
    _config_arg(p)
    p.add_argument("--backend", choices=("userspace", "kernel"), default="userspace")
    p.add_argument("--interface", help="interface name (default mo-ORG; unique per host)")
    p.add_argument("--state-dir", help="state directory (default /var/lib/meshops)")
    p.add_argument("--key-dir", help="where the key files go (default: the config's directory)")
    p.add_argument("--netns", help="network namespace of the interface (lab, tests)")
    p.add_argument("--listen-port", type=int, help="override the org's listen port")
    p.add_argument("--stun", action="append", metavar="HOST:PORT",
                   help="STUN server for endpoint discovery; repeat")
    p.add_argument("--discover", action="store_true",
                   help="run STUN discovery with mesh.yaml's stun_servers")
    p.add_argument("--hub-ca", metavar="PEM",
                   help="CA for the hub's certificate (default: the org CA in --trust, "
                        "checked under the name ORG.hub)")
    p.add_argument("--oidc-ca-file", metavar="PEM",
                   help="CA bundle for the identity provider (default: the system store)")
    _rotation_arg(p)
    p.add_argument("--force", action="store_true",
                   help="replace an existing config and make new keys")
    p.set_defaults(handler=enroll)

    p = asub.add_parser(
        "rotate-key", help="make a new WireGuard key and ask the hub to commit its public key",
        description="Generate the next WireGuard key into wireguard.key.next (mode 0600, next "
        "to the current key file) and send the hub a rotation request signed with this "
        "device's identity key. The hub commits the new public key to the branch it follows "
        "(no review: the identity key proves the device). The agent keeps the current key "
        "until the manifest carries the new one, then switches in one pass.")
    _config_arg(p)
    once = p.add_mutually_exclusive_group()
    once.add_argument("--force", action="store_true",
                      help="replace a pending wireguard.key.next with a new key")
    once.add_argument("--resend", action="store_true",
                      help="send the pending wireguard.key.next again (after a timeout)")
    p.set_defaults(handler=rotate_key)

    p = asub.add_parser("apply", help="one reconcile pass (for timers and cron)",
                        description="Fetch and verify the manifest, compute the desired "
                        "interface, apply the plan, verify; then, with key_rotation_days, "
                        "start a WireGuard key rotation when the key is that old. Exit 0 "
                        "converged, 1 refused or permanent error, 75 temporary failure.")
    _config_arg(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(handler=apply)

    p = asub.add_parser("run", help="reconcile in a loop (daemon; long-polls a hub)")
    _config_arg(p)
    p.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=run)

    p = asub.add_parser("status", help="peers, paths, handshakes and traffic")
    _config_arg(p)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=status)

    p = asub.add_parser(
        "render", help="write a wg-quick config (devices no agent runs on)",
        description="Render this device's desired interface as a wg-quick file. Needs the "
        "WireGuard private key: the config's key file, or --private-key.")
    _config_arg(p)
    p.add_argument("--format", choices=("wg-quick",), default="wg-quick")
    p.add_argument("--private-key", metavar="FILE", help="private key file (default: config's)")
    p.add_argument("--out", metavar="FILE", help="write here (mode 0600) instead of stdout")
    p.set_defaults(handler=render)


def _rotation_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-rotation-days", type=int, metavar="N",
                   help="rotate the WireGuard key through the hub when it is N days old "
                        "(key_rotation_days; needs --hub)")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get("MESHOPS_AGENT_CONFIG", DEFAULT_CONFIG),
                   help=f"agent config file (default {DEFAULT_CONFIG}, or $MESHOPS_AGENT_CONFIG)")


def _new_config(args: argparse.Namespace) -> tuple[Any, bytes, Any, Any]:
    """The agent config ``init`` and ``enroll`` write: (path, trust bytes, config, key dir)."""
    from pathlib import Path

    from reconciler.agent.config import DEFAULT_STATE_DIR, AgentConfig
    from reconciler.errors import UsageError
    from reconciler.pki.envelope import load_trust

    config_path = Path(args.config).absolute()
    if config_path.exists() and not args.force:
        raise UsageError(f"{config_path} exists; pass --force to replace it (and the keys)")
    trust_bytes = _read(args.trust)
    trust = load_trust(trust_bytes)
    if args.org not in trust.orgs:
        raise UsageError(f"{args.trust}: holds no trust anchor for org {args.org!r}")
    key_dir = Path(args.key_dir).absolute() if args.key_dir else config_path.parent
    config = AgentConfig(
        org=args.org, name=args.name, hub=args.hub,
        manifest_url=getattr(args, "manifest_url", None),
        trust=str(config_path.parent / "trust.json"),
        private_key=str(key_dir / "wireguard.key"), identity_key=str(key_dir / "identity.key"),
        backend=args.backend, interface=args.interface or "", netns=args.netns,
        state_dir=str(Path(args.state_dir).absolute()) if args.state_dir else DEFAULT_STATE_DIR,
        listen_port=args.listen_port, stun_servers=tuple(args.stun) if args.stun else None,
        discover=bool(args.stun) or args.discover,
        key_rotation_days=args.key_rotation_days,
    ).validate()
    return config_path, trust_bytes, config, key_dir


def _write_new_device(args: argparse.Namespace) -> tuple[Any, Any, bytes]:
    """``agent init`` and ``agent enroll``: keys (0600), pinned trust and config."""
    from reconciler.agent.config import save_config
    from reconciler.agent.keys import generate_keys
    from reconciler.fsio import atomic_write

    config_path, trust_bytes, config, key_dir = _new_config(args)
    keys = generate_keys(config.private_key, config.identity_key, force=args.force)
    atomic_write(config.trust, trust_bytes, mode=0o644)
    save_config(config, config_path)
    print(f"# wrote {config_path}; keys in {key_dir} (mode 0600, never leave this device)")
    return config, keys, trust_bytes


def init(args: argparse.Namespace) -> int:
    _, keys, _ = _write_new_device(args)
    print(f"# add this device with a pull request: orgs/{args.org}/devices/{args.name}.yaml")
    print("kind: Device")
    print(f"name: {args.name}")
    print("owner: OWNER  # the user who owns this device")
    print("wireguard:")
    print(f"  public_key: {keys.wireguard_public_key}")
    print("identity:")
    print(f"  public_key: {keys.identity_public_key}")
    print("tunnel_ips: []  # `meshops device add` allocates them")
    print("#")
    print("# or let meshops allocate the tunnel IPs and write the file:")
    print(f"#   meshops device add {args.name} --org {args.org} "
          f"--wireguard-key {keys.wireguard_public_key} "
          f"--identity-key {keys.identity_public_key}")
    return 0


def enroll(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from reconciler.agent.enroll import enroll as run_enroll
    from reconciler.agent.fetch import HttpTransport, TlsConfig
    from reconciler.fsio import atomic_write
    from reconciler.identity.http import UrllibTransport
    from reconciler.pki.envelope import load_trust

    config, keys, trust_bytes = _write_new_device(args)
    with tempfile.TemporaryDirectory(prefix="meshops-enroll-") as tmp:
        hub_ca, server_name = args.hub_ca, None
        if hub_ca is None and args.hub.startswith("https://"):
            ca_pem = load_trust(trust_bytes).orgs[args.org].ca_pem
            if ca_pem:
                hub_ca = f"{tmp}/hub-ca.pem"
                atomic_write(hub_ca, ca_pem.encode(), mode=0o644)
                server_name = f"{args.org}.hub"
        hub = HttpTransport(TlsConfig(ca=hub_ca, server_name=server_name))
        result = run_enroll(
            hub_url=args.hub, org=args.org, name=args.name,
            wireguard_public_key=keys.wireguard_public_key,
            identity_public_key=keys.identity_public_key,
            identity_key_path=config.identity_key, hub=hub,
            issuer=UrllibTransport(ca_file=args.oidc_ca_file), sleep=time.sleep, now=time.time,
            say=lambda line: print(line, flush=True))
    ips = ", ".join(result.tunnel_ips)
    if result.status == "approved":
        print(f"enrolled: {args.org}/{args.name} (owner {result.owner}, {ips}) committed to "
              f"{result.branch} as {result.commit[:12]}; run `meshops agent run`")
    else:
        print(f"enrollment of {args.org}/{args.name} (owner {result.owner}, {ips}) awaits "
              f"review: branch {result.branch} ({result.commit[:12]}); once it is merged, "
              "run `meshops agent run`")
    if result.expires:
        print(f"the device expires at {result.expires} (the org's device lifetime)")
    return 0


def rotate_key(args: argparse.Namespace) -> int:
    import time

    from reconciler.agent.rotate import rotate_key as run_rotate
    from reconciler.agent.runtime import make_fetcher

    config = _load(args)
    result = run_rotate(config, fetch=make_fetcher(config), now=time.time, force=args.force,
                        resend=args.resend)
    print(f"new WireGuard key for {config.org}/{config.name}: public key "
          f"{result.new_public_key}; private key in {result.next_key_path} (mode 0600)")
    print(f"the hub committed it to {result.branch or 'the branch it follows'} as "
          f"{result.commit[:12]}")
    print("next: the agent keeps its current key until the manifest carries the new public "
          "key, then switches to it in one pass (`meshops agent run` does this by itself; "
          "with a timer, the next `meshops agent apply`)")
    return 0


def _read(path: str) -> bytes:
    from reconciler.errors import UsageError

    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from exc


def _load(args: argparse.Namespace) -> Any:
    from reconciler.agent.config import load_config

    return load_config(args.config)


def apply(args: argparse.Namespace) -> int:
    import gc

    enabled = gc.isenabled()
    gc.disable()  # the imports and the pass make no cycles worth collecting (agent.reconcile)
    try:
        return _apply(args)
    finally:
        if enabled:
            gc.enable()


def _apply(args: argparse.Namespace) -> int:
    import gc
    import time

    from reconciler.agent.reconcile import reconcile_once
    from reconciler.agent.runtime import (
        make_discover,
        make_fetcher,
        make_host,
        make_public_fetcher,
        open_agent_backend,
    )

    config = _load(args)
    backend = open_agent_backend(config)
    firewall, routing = make_host(config)
    fetch = make_fetcher(config)
    # One pass, then the process ends (exit_quickly): no cyclic collection at
    # all (a full one over a 10,000-peer heap is ~15 ms, and there are no cycles
    # worth it), and the pass's values are left for the exit, not freed one by one.
    gc.disable()
    kept: list[Any] = []
    try:
        result = reconcile_once(config, fetch=fetch, backend=backend,
                                now=time.time(), dry_run=args.dry_run,
                                discover=make_discover(config), firewall=firewall,
                                routing=routing, public_fetch=make_public_fetcher(config),
                                retain=kept)
    finally:
        backend.close()
        routing.close()
    for warning in result.warnings:
        print(f"meshops: warning: {warning}", file=sys.stderr)
    try:
        if config.key_rotation_days and not args.dry_run and result.requeue_after is None:
            _report_rotation(config, fetch, time.time())
    finally:
        fetch.close()  # the kept-open connection to the hub, if any
    from reconciler.cli import exit_quickly

    exit_quickly(kept, result)  # everything is written and closed (reconciler.cli.run)
    if args.format == "json":
        doc: dict[str, Any] = {"operations": len(result.operations) if args.dry_run
                               else result.applied, "serial": result.serial,
                               "commit": result.commit, "source": result.source,
                               "dry_run": args.dry_run}
        if args.dry_run:
            doc["plan"] = [str(op) for op in result.operations]
        print(json.dumps(doc, sort_keys=True))
        return 0
    if args.dry_run:
        print(f"{len(result.operations)} operation(s) planned (serial {result.serial}, "
              f"commit {result.commit[:12]}); dry run, nothing changed")
        for op in result.operations:
            print(f"  {op}")
        return 0
    print(f"{result.applied} operation(s) applied (serial {result.serial}, "
          f"commit {result.commit[:12]})")
    return 0


def _report_rotation(config: Any, fetch: Any, now: float) -> None:
    """``key_rotation_days`` after a good ``agent apply`` pass: one line on stderr
    when a rotation was started or sent again (a refusal is a warning: the
    pass converged, and the next run backs off)."""
    from reconciler.agent.autorotate import rotate_if_due

    _print_rotation(rotate_if_due(config, fetch=fetch, now=now))


def _print_rotation(rotation: Any) -> None:
    if rotation.due.warning:
        print(f"meshops: warning: {rotation.due.warning}", file=sys.stderr, flush=True)
    line = rotation.message()
    if line:
        prefix = "meshops: warning: " if rotation.error else "meshops: "
        print(prefix + line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import random
    import signal
    import threading
    import time

    from reconciler.agent.loop import AgentLoop
    from reconciler.agent.runtime import (
        make_discover,
        make_fetcher,
        make_host,
        make_public_fetcher,
        open_agent_backend,
    )

    config = _load(args)
    backend = open_agent_backend(config)
    firewall, routing = make_host(config)
    stop = threading.Event()

    class _Terminated(Exception):
        pass

    def on_result(result: Any) -> None:
        if result.applied:
            print(f"{result.applied} operation(s) applied (serial {result.serial}, "
                  f"commit {result.commit[:12]})", flush=True)
        for warning in result.warnings:
            print(f"meshops: warning: {warning}", file=sys.stderr, flush=True)

    def on_error(exc: Exception) -> None:
        print(f"meshops: {exc}", file=sys.stderr, flush=True)

    fetch = make_fetcher(config)
    loop = AgentLoop(config, fetch=fetch, backend=backend, clock=time.time,
                     sleep=lambda s: stop.wait(s), rng=random.Random(),
                     discover=make_discover(config), on_result=on_result, on_error=on_error,
                     firewall=firewall, routing=routing,
                     public_fetch=make_public_fetcher(config), on_rotation=_print_rotation)

    def handle(signum: int, frame: Any) -> None:  # the tunnels stay up
        loop.stop()
        stop.set()
        if loop.interruptible:
            raise _Terminated()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    try:
        loop.run(max_passes=1 if args.once else None)
    except _Terminated:
        pass
    finally:
        fetch.close()
        backend.close()
        routing.close()
    return 0


def status(args: argparse.Namespace) -> int:
    import time

    from reconciler.agent.runtime import open_agent_backend
    from reconciler.agent.state import StateDir
    from reconciler.agent.status import build_status, format_table

    config = _load(args)
    backend = open_agent_backend(config)
    try:
        observed = backend.observe(config.interface)
    finally:
        backend.close()
    applied = StateDir(config.state_dir).load_applied()
    warnings = []
    if applied and applied.get("relay"):
        from reconciler.net.firewall import forward_drop_warning

        warning = forward_drop_warning(config.interface, config.netns)
        if warning:
            warnings.append(warning)
    st = build_status(applied, observed, time.time(), warnings=warnings)
    if args.format == "json":
        print(json.dumps(st.as_dict(), indent=2, sort_keys=True))
    else:
        print(format_table(st))
    return 0


def render(args: argparse.Namespace) -> int:
    import time

    from reconciler.agent.render import render_config
    from reconciler.agent.runtime import make_fetcher
    from reconciler.fsio import atomic_write

    config = _load(args)
    text = render_config(config, fetch=make_fetcher(config), now=time.time(),
                         private_key_path=args.private_key)
    if args.out:
        atomic_write(args.out, text.encode(), mode=0o600)
        print(f"wrote {args.out} (mode 0600: it holds the private key)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
