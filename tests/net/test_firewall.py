"""Read-only FORWARD-chain check for relays: parsing ``iptables -S`` and the runner."""

from __future__ import annotations

import subprocess

import pytest

from reconciler.net.firewall import forward_allows, forward_drop_warning

DOCKER_HOST = """-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N DOCKER
-N DOCKER-USER
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A DOCKER-USER -j RETURN
"""


def test_accept_policy_passes() -> None:
    assert forward_allows("-P FORWARD ACCEPT\n", "mo-acme")
    assert forward_allows("", "mo-acme")  # no filter table rules at all


def test_drop_policy_without_a_matching_rule_drops() -> None:
    assert not forward_allows(DOCKER_HOST, "mo-acme")
    narrow = DOCKER_HOST + "-A FORWARD -i mo-acme -o mo-acme -p udp -j ACCEPT\n"
    assert not forward_allows(narrow, "mo-acme")  # only some traffic: not counted
    other = DOCKER_HOST + "-A FORWARD -i wg9 -o wg9 -j ACCEPT\n"
    assert not forward_allows(other, "mo-acme")


def test_the_documented_rule_or_a_docker_user_rule_passes() -> None:
    assert forward_allows(DOCKER_HOST + "-A FORWARD -i mo-acme -o mo-acme -j ACCEPT\n", "mo-acme")
    user = DOCKER_HOST.replace("-A DOCKER-USER -j RETURN",
                               "-A DOCKER-USER -i mo+ -o mo+ -j ACCEPT\n-A DOCKER-USER -j RETURN")
    assert forward_allows(user, "mo-acme")


def _runner(rc: int, out: str):
    calls: list[list[str]] = []

    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, rc, out, "")

    return run, calls


def test_warning_names_the_rule_and_runs_in_the_namespace() -> None:
    run, calls = _runner(0, DOCKER_HOST)
    text = forward_drop_warning("mo-acme", "ns1", run=run)
    assert calls == [["ip", "netns", "exec", "ns1", "iptables", "-S"]]
    assert text is not None and "silently drop" in text
    assert "ip netns exec ns1 iptables -A FORWARD -i mo-acme -o mo-acme -j ACCEPT" in text


def test_no_warning_when_it_passes_or_cannot_be_read() -> None:
    assert forward_drop_warning("mo-acme", run=_runner(0, "-P FORWARD ACCEPT\n")[0]) is None
    assert forward_drop_warning("mo-acme", run=_runner(4, "")[0]) is None  # no permission

    def missing(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("iptables")

    assert forward_drop_warning("mo-acme", run=missing) is None



@pytest.mark.root
def test_real_namespace_drop_policy_then_the_documented_rule(netns: str) -> None:
    def ipt(*args: str) -> None:
        subprocess.run(["ip", "netns", "exec", netns, "iptables", *args], check=True)

    assert forward_drop_warning("mo-fw0", netns) is None  # a fresh namespace accepts
    ipt("-P", "FORWARD", "DROP")
    assert "iptables -A FORWARD -i mo-fw0 -o mo-fw0 -j ACCEPT" in (forward_drop_warning("mo-fw0", netns) or "")
    ipt("-A", "FORWARD", "-i", "mo-fw0", "-o", "mo-fw0", "-j", "ACCEPT")
    assert forward_drop_warning("mo-fw0", netns) is None
