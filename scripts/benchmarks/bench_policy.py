"""Benchmarks for the policy engine, ``meshops plan`` and address allocation.

* ``policy_peers_allowed_5k``: one agent run's ``peers_allowed`` in a 5,000-device
  org with 25 rules (seconds, median of 5).
* ``policy_labels_bytes_per_device``: mean JSON bytes of ``ManifestDevice.labels``
  per device (the manifest's whole budget is 200 bytes/device).
* ``policy_compiled_bytes``: JSON size of the compiled policy (independent of devices).
* ``plan_diff_10k``: ``review_diff`` + markdown between two 10,000-device repos
  (one rule changed, one device added, one disabled).
* ``allocate_next_free_10k``: ``next_free`` in a 10,000-device org.
"""

from __future__ import annotations

import ipaddress
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from reconciler import structs
from reconciler.config.allocate import next_free
from reconciler.model.manifest import Manifest, ManifestDevice
from reconciler.model.repo import (
    Device,
    Group,
    Mesh,
    Organization,
    OrgState,
    Policy,
    PortRange,
    Repo,
    Rule,
)
from reconciler.policy import compile_policy, peers_allowed
from reconciler.policy.review import render_markdown, review_diff

TAGS = ("web", "db", "cache", "ci", "laptop", "printer", "gpu", "edge")


def synthetic_org(n: int, rules: int = 25) -> OrgState:
    base = int(ipaddress.ip_address("10.0.0.1"))
    users = n // 10 + 1
    devices = {
        f"dev-{i:05d}": Device(
            name=f"dev-{i:05d}", org="bench", owner=f"user-{i % users:04d}",
            wireguard_public_key=f"wg{i}", identity_public_key=f"id{i}",
            tunnel_ips=(str(ipaddress.ip_address(base + i)),),
            tags=(TAGS[i % len(TAGS)],) + (("prod",) if i % 3 == 0 else ()),
        )
        for i in range(n)
    }
    groups = {f"team-{g}": Group(f"team-{g}", users=tuple(f"user-{u:04d}" for u in
                                                           range(g, users, 7)),
                                 tags=(TAGS[g % len(TAGS)],))
              for g in range(7)}
    rule_list = tuple(
        Rule(src=(f"group:team-{i % 7}",), dst=(f"tag:{TAGS[(i + 1) % len(TAGS)]}",),
             proto=("tcp", "udp", "any")[i % 3], ports=(PortRange(1000 + i, 1000 + i * 3),),
             name=f"r{i}", index=i)
        for i in range(rules - 1)
    ) + (Rule(src=("*",), dst=("*",), proto="icmp", name="ping", index=rules - 1),)
    return OrgState(Organization("bench", "10.0.0.0/16"), devices=devices,
                    policy=Policy(groups=groups, rules=rule_list))


def _median(fn: Callable[[], Any], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _manifest(state: OrgState) -> Manifest:
    compiled = compile_policy(state)
    devices = tuple(ManifestDevice(name=d.name, wireguard_public_key=d.wireguard_public_key,
                                   tunnel_ips=d.tunnel_ips, cert_sha256="", tags=d.tags,
                                   labels=compiled.labels(d.name))
                    for d in state.enabled_devices())
    return Manifest(org="bench", serial=1, commit="", issued_at=0, not_after=0,
                    cidr_v4="10.0.0.0/16", cidr_v6=None, listen_port=51820, keepalive=25,
                    devices=devices, policy=compiled.as_dict())


def bench_peers_allowed() -> dict[str, Any]:
    manifest = _manifest(synthetic_org(5000))
    peers: frozenset[str] = frozenset()

    def once() -> None:
        nonlocal peers
        peers = peers_allowed(manifest, "dev-00042")

    return {"value": _median(once), "unit": "s", "goal": 0.05, "devices": 5000, "rules": 25,
            "peers": len(peers)}


def bench_labels_bytes() -> dict[str, Any]:
    state = synthetic_org(5000)
    compiled = compile_policy(state)
    sizes = [len(json.dumps(list(compiled.labels(n)), separators=(",", ":")))
             for n in state.devices]
    return {"value": statistics.mean(sizes), "unit": "bytes", "goal": 60.0, "max": max(sizes)}


def bench_compiled_bytes() -> dict[str, Any]:
    small = compile_policy(synthetic_org(100)).as_dict()
    big = compile_policy(synthetic_org(5000)).as_dict()
    size = len(json.dumps(big, separators=(",", ":")))
    return {"value": float(size), "unit": "bytes", "goal": None,
            "same_for_100_devices": small == big}


def bench_plan_diff() -> dict[str, Any]:
    base_org = synthetic_org(10_000)
    assert base_org.policy is not None
    rules = list(base_org.policy.rules)
    rules[3] = structs.replace(rules[3], ports=(PortRange(22, 22),))
    devices = dict(base_org.devices)
    devices["dev-00007"] = structs.replace(devices["dev-00007"], disabled=True)
    devices["new-1"] = structs.replace(devices["dev-00001"], name="new-1",
                                           tunnel_ips=("10.0.200.1",))
    head_org = structs.replace(base_org, devices=devices,
                                   policy=structs.replace(base_org.policy,
                                                              rules=tuple(rules)))
    mesh = Mesh(hub_url="https://hub.example.com")
    base, head = Repo(mesh, {"bench": base_org}, "a"), Repo(mesh, {"bench": head_org}, "b")
    text = ""

    def once() -> None:
        nonlocal text
        text = render_markdown(review_diff(base, head))

    return {"value": _median(once, 3), "unit": "s", "goal": 2.0, "devices": 10_000,
            "markdown_bytes": len(text.encode())}


def bench_next_free() -> dict[str, Any]:
    state = synthetic_org(10_000, rules=1)
    ip = ""

    def once() -> None:
        nonlocal ip
        ip = next_free(state, 4)

    return {"value": _median(once), "unit": "s", "goal": 0.05, "allocated": ip}


BENCHMARKS = {
    "policy_peers_allowed_5k": bench_peers_allowed,
    "policy_labels_bytes_per_device": bench_labels_bytes,
    "policy_compiled_bytes": bench_compiled_bytes,
    "plan_diff_10k": bench_plan_diff,
    "allocate_next_free_10k": bench_next_free,
}
