"""Timed changes to a running lab: the e2e suite and ``scripts/bench lab`` share them.

Each scenario performs one change through the real path (a git commit the hub
picks up, a namespace re-plumbed, a relay killed) and returns the seconds until
the lab showed the expected effect, or ``None`` if it did not within
``timeout``. Tests assert the effect happened; the benchmark records the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.lab.runner import Lab


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: float | None
    goal: float
    detail: str = ""


def converge(lab: Lab, timeout: float = 90) -> Timing:
    t = lab.wait_until(lambda: all(lab.probe(a, b).ok for a, b in lab.pairs()), timeout, step=0.5)
    return Timing("lab.converge", t, 60.0, "every pair pings after `lab up`")


def add_device(lab: Lab, name: str = "a3", site: str = "a", ip: str = "10.10.1.13", timeout: float = 60) -> Timing:
    lab.add_device(name, site, ip)
    t = lab.wait_until(lambda: lab.probe("pub", name).ok, timeout)
    return Timing("lab.add_to_first_ping", t, 2.0, f"commit adding {name} -> pub pings it")


def remove_device(lab: Lab, name: str = "a3", timeout: float = 60) -> Timing:
    lab.remove_device(name)
    others = [n for n in lab.keys if n != name]
    key = lab.keys[name]["wireguard"]

    def cut() -> bool:
        from reconciler.lab.matrix import wg_dump

        for n in others:
            if key in wg_dump(lab.topo.ns(n), lab.topo.ifname(n)):
                return False
        return True

    t = lab.wait_until(cut, timeout)
    return Timing("lab.remove_to_cut", t, 2.0, f"commit removing {name} -> no peer holds its key")


def move(lab: Lab, name: str = "a2", site: str = "b", ip: str = "10.10.2.12", timeout: float = 60) -> Timing:
    lab.move(name, site, ip)
    targets = [n for n in lab.keys if n != name]
    t = lab.wait_until(lambda: all(lab.reachable(name, n) for n in targets), timeout, step=0.1)
    if t is not None and not all(lab.probe(name, n).ok for n in targets):
        t = None  # the quick pings are confirmed with the full probe
    return Timing("lab.move_to_restored", t, 3.0, f"{name} moved to site {site} -> pings every node again")


def relay_failover(lab: Lab, src: str = "b1", dst: str = "c1", timeout: float = 90) -> Timing:
    used = lab.probe(src, dst).path
    relay = used.split(":", 1)[1] if used.startswith("relay:") else "relay1"
    lab.kill_agent_and_tunnel(relay)
    other = "relay2" if relay == "relay1" else "relay1"

    def failed_over() -> bool:
        r = lab.probe(src, dst)
        return r.ok and r.path == f"relay:{other}"

    t = lab.wait_until(failed_over, timeout, step=0.5)
    return Timing("lab.relay_failover", t, 30.0, f"{relay} killed -> {src}->{dst} via {other}")
