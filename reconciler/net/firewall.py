"""Read-only check: will the firewall let a relay forward wg -> wg?

A relay receives a packet on its WireGuard interface and sends it out of the
same interface. With IP forwarding on, the packet still crosses the
iptables ``FORWARD`` chain; on hosts whose policy is ``DROP`` (every Docker
host) relayed traffic is dropped silently. meshops never adds firewall
rules; ``forward_drop_warning(interface, netns)`` only reads
``iptables -S`` and returns a warning naming the rule to add, or ``None``.

Called by ``meshops agent status`` (through the CLI) for relays. Stdlib
only; the command runner is injected for tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)


def _matches(pattern: str, interface: str) -> bool:
    """iptables interface match: exact, or ``prefix+`` as a wildcard."""
    if pattern.endswith("+"):
        return interface.startswith(pattern[:-1])
    return pattern == interface


def _accepts(tokens: list[str], interface: str) -> bool:
    """True when a rule (tokens after ``-A CHAIN``) accepts every packet from
    ``interface`` to ``interface``: only ``-i``/``-o`` matches, target ACCEPT."""
    target = None
    i = 0
    while i < len(tokens):
        opt = tokens[i]
        value = tokens[i + 1] if i + 1 < len(tokens) else ""
        if opt in ("-i", "--in-interface", "-o", "--out-interface"):
            if not _matches(value, interface):
                return False
        elif opt in ("-j", "--jump"):
            target = value
        else:  # any other match (-s, -p, -m, "!") narrows the rule: do not count on it
            return False
        i += 2
    return target == "ACCEPT"


def forward_allows(rules_text: str, interface: str) -> bool:
    """``iptables -S`` output -> does traffic ``interface`` -> ``interface`` get
    through the filter FORWARD chain? Counts the chain policy and ACCEPT rules
    in FORWARD or in a chain FORWARD jumps to unconditionally (``DOCKER-USER``)."""
    policy = "ACCEPT"
    chains: dict[str, list[list[str]]] = {}
    for line in rules_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "-P" and parts[1] == "FORWARD":
            policy = parts[2]
        elif len(parts) >= 2 and parts[0] == "-A":
            chains.setdefault(parts[1], []).append(parts[2:])
    if policy == "ACCEPT":
        return True
    seen = {"FORWARD"}
    todo = ["FORWARD"]
    while todo:
        for rule in chains.get(todo.pop(), []):
            if _accepts(rule, interface):
                return True
            if len(rule) == 2 and rule[0] in ("-j", "--jump") and rule[1] not in seen \
                    and rule[1] in chains:
                seen.add(rule[1])
                todo.append(rule[1])
    return False


def forward_drop_warning(interface: str, netns: str | None = None, *,
                         run: Runner = _run) -> str | None:
    """A warning when the FORWARD chain would drop relayed traffic on
    ``interface``; ``None`` when it passes or cannot be read (no iptables,
    no permission)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    try:
        res = run([*prefix, "iptables", "-S"])
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0 or forward_allows(res.stdout, interface):
        return None
    where = f"ip netns exec {netns} " if netns else ""
    return (
        f"the iptables FORWARD policy drops traffic and no rule accepts {interface} -> "
        f"{interface}: this relay will silently drop relayed packets; allow it with "
        f"`{where}iptables -A FORWARD -i {interface} -o {interface} -j ACCEPT`"
    )
