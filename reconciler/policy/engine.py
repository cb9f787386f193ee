"""Evaluate one flow against an org's policy, and run the policy's tests.

``evaluate(org_state, src, dst, proto, port)`` is the reference semantics that
the compiled form (``compiled.evaluate_compiled``) and the reachability matrix
(``reach``) must agree with. Called by ``reconciler.config`` (policy tests in
``meshops validate``), ``policy.review`` and tests. Pure and stdlib-only.

Semantics (docs/policy.md has the long form):

* no policy (``org_state.policy is None``): full mesh, every enabled device
  reaches every other;
* with a policy, rules only accept; the first rule (in file order) whose src,
  dst, proto and ports match decides; nothing matching means deny;
* a rule with proto ``any`` matches every query protocol; a query with proto
  ``any`` matches only rules with proto ``any``;
* ICMP has no ports: an ICMP query ignores ports, so a proto ``any`` rule with
  ports also accepts ICMP; a tcp/udp query with ``port=None`` matches a rule
  whatever its ports ("some port of this protocol");
* a disabled or unknown device never reaches, nor is reached;
* organizations never reach each other (``evaluate_repo``);
* ``dst`` may be an IP address outside the org's CIDRs instead of a device
  name: ``route:CIDR`` selects it when CIDR contains it, ``internet`` when no
  org CIDR and no advertised route of an enabled device contains it. A
  tunnel address is refused: name the device instead. With no policy, every
  such destination is accepted (full mesh).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from reconciler.model.rules import Rule
from reconciler.structs import Record

if TYPE_CHECKING:  # annotations only: the repository model is not loaded on the agent's path
    from reconciler.model.repo import Device, OrgState, Policy, PolicyTest, Repo

from .access import ranges_contain
from .selectors import Address, Network, matches, parse_address, selects_address

ACCEPT = "accept"
DENY = "deny"


class Decision(Record):
    action: str  # "accept" | "deny"
    rule: Rule | None
    reason: str

    @property
    def accepted(self) -> bool:
        return self.action == ACCEPT


class TestOutcome(Record):
    test: PolicyTest
    decision: Decision
    passed: bool

    __test__ = False  # not a pytest class


def rule_label(rule: Rule) -> str:
    """How plans and messages name a rule: its name, else its position."""
    return f"rule {rule.name!r}" if rule.name else f"rules[{rule.index}]"


def flow_text(src: str, dst: str, proto: str, port: int | None) -> str:
    where = f"{proto}/{port}" if port is not None and proto not in ("icmp",) else proto
    return f"{where} from {src} to {dst}"


def proto_matches(rule_proto: str, proto: str) -> bool:
    return rule_proto == "any" or rule_proto == proto


def port_matches(rule: Rule, proto: str, port: int | None) -> bool:
    if proto == "icmp" or port is None or not rule.ports:
        return True
    return ranges_contain(rule.ports, port)


def rule_matches(policy: Policy, rule: Rule, src: Device, dst: Device, proto: str,
                 port: int | None) -> bool:
    return (
        proto_matches(rule.proto, proto)
        and port_matches(rule, proto, port)
        and any(matches(policy, s, src) for s in rule.src)
        and any(matches(policy, d, dst) for d in rule.dst)
    )


def _refuse(org_state: OrgState, src: str, dst: str) -> str | None:
    for role, name in (("source", src), ("destination", dst)):
        device = org_state.devices.get(name)
        if device is None:
            return f"{role} device {name!r} is not in org {org_state.name!r}"
        if device.disabled:
            return f"{role} device {name!r} is disabled"
    return None


def inside_networks(org_state: OrgState) -> tuple[Network, ...]:
    """The org's CIDRs plus every enabled device's routes: what ``internet`` is not."""
    out: list[Network] = []
    org = org_state.organization
    for text in (org.cidr_v4, org.cidr_v6, *(r for d in org_state.enabled_devices()
                                             for r in d.routes)):
        if text:
            try:
                out.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                continue
    return tuple(out)


def org_networks(org_state: OrgState) -> tuple[Network, ...]:
    org = org_state.organization
    return tuple(ipaddress.ip_network(c, strict=False) for c in (org.cidr_v4, org.cidr_v6) if c)


def evaluate_address(rules: tuple[Rule, ...] | None, src_match: object, src: str,
                     address: Address, inside: tuple[Network, ...], org: tuple[Network, ...],
                     proto: str, port: int | None) -> Decision:
    """Shared by ``evaluate`` and ``compiled.evaluate_compiled``: may ``src`` send
    to an address outside the mesh? ``src_match(selector) -> bool`` says whether
    a src selector picks ``src``."""
    dst = str(address)
    if any(address in net for net in org):
        return Decision(DENY, None, f"{dst} is a tunnel address: name the device instead")
    if rules is None:
        return Decision(ACCEPT, None, "no policy: full mesh")
    for rule in rules:
        if not proto_matches(rule.proto, proto) or not port_matches(rule, proto, port):
            continue
        if not any(selects_address(d, address, inside) for d in rule.dst):
            continue
        if any(src_match(s) for s in rule.src):  # type: ignore[operator]
            return Decision(ACCEPT, rule,
                            f"{rule_label(rule)} accepts {flow_text(src, dst, proto, port)}")
    return Decision(DENY, None, f"no rule accepts {flow_text(src, dst, proto, port)}")


def evaluate(org_state: OrgState, src: str, dst: str, proto: str, port: int | None) -> Decision:
    """Decide whether device ``src`` may send ``proto``/``port`` to device ``dst``
    (or to the address ``dst`` outside the mesh)."""
    address = parse_address(dst)
    if address is not None:
        refused = _refuse(org_state, src, src)
        if refused:
            return Decision(DENY, None, refused)
        policy = org_state.policy
        device = org_state.devices[src]
        return evaluate_address(
            policy.rules if policy is not None else None,
            lambda sel: matches(policy, sel, device) if policy is not None else True,
            src, address, inside_networks(org_state), org_networks(org_state), proto, port)
    refused = _refuse(org_state, src, dst)
    if refused:
        return Decision(DENY, None, refused)
    policy = org_state.policy
    if policy is None:
        return Decision(ACCEPT, None, "no policy: full mesh")
    s, d = org_state.devices[src], org_state.devices[dst]
    for rule in policy.rules:
        if rule_matches(policy, rule, s, d, proto, port):
            return Decision(ACCEPT, rule, f"{rule_label(rule)} accepts {flow_text(src, dst, proto, port)}")
    return Decision(DENY, None, f"no rule accepts {flow_text(src, dst, proto, port)}")


def evaluate_repo(repo: Repo, src: str, dst: str, proto: str, port: int | None) -> Decision:
    """Like ``evaluate`` with ``"org/device"`` names; different orgs never reach each other."""
    src_org, _, src_dev = src.partition("/")
    dst_org, _, dst_dev = dst.partition("/")
    if src_org != dst_org:
        return Decision(DENY, None, f"organizations never reach each other ({src_org} -> {dst_org})")
    org_state = repo.orgs.get(src_org)
    if org_state is None:
        return Decision(DENY, None, f"no organization {src_org!r}")
    return evaluate(org_state, src_dev, dst_dev, proto, port)


def run_tests(org_state: OrgState) -> tuple[TestOutcome, ...]:
    """Evaluate every ``policy.tests`` entry; ``passed`` is decision == expect."""
    if org_state.policy is None:
        return ()
    out = []
    for test in org_state.policy.tests:
        decision = evaluate(org_state, test.src, test.dst, test.proto, test.port)
        out.append(TestOutcome(test, decision, decision.action == test.expect))
    return tuple(out)
