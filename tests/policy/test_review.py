"""review_diff and its renderers; golden files in tests/policy/golden/.

Regenerate the golden files after an intended change with
``MESHOPS_UPDATE_GOLDEN=1 pytest tests/policy/test_diff.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from policyorgs import ACME_DEVICES, ACME_GROUPS, ACME_RULES, dev, org_state, ports, repo

from reconciler import structs
from reconciler.model.repo import Organization, Policy, Rule
from reconciler.policy import Access
from reconciler.policy.render import MAX_ROWS
from reconciler.policy.review import render_json, render_markdown, render_text, review_diff

GOLDEN = Path(__file__).parent / "golden"


def globex():
    return org_state(devices=(dev("g-1", "alice", "10.20.0.2", org="globex"),
                              dev("g-2", "alice", "10.20.0.3", org="globex")),
                     policy=None, name="globex", cidr="10.20.0.0/24")


def base_repo():
    return repo(org_state(), globex(), commit="a" * 40)


def head_repo():
    devices = {d.name: d for d in ACME_DEVICES}
    devices["db-1"] = structs.replace(devices["db-1"], tags=("db", "prod"),
                                          description="primary")
    devices["web-1"] = structs.replace(devices["web-1"], disabled=True)
    devices["db-2"] = structs.replace(devices["db-2"], disabled=False)
    devices["laptop-c"] = dev("laptop-c", "bob", "10.10.0.9")
    rules = list(ACME_RULES)
    rules[1] = structs.replace(rules[1], ports=ports(5432, 6432))
    acme = org_state(devices=tuple(devices.values()),
                     policy=Policy(groups=ACME_GROUPS, rules=tuple(rules)))
    initech = org_state(devices=(dev("i-1", "alice", "10.30.0.2", org="initech"),),
                        policy=None, name="initech", cidr="10.30.0.0/24")
    return repo(acme, globex(), initech, commit="b" * 40)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MESHOPS_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; see the module docstring"


def test_device_changes():
    report = review_diff(base_repo(), head_repo())
    assert [o.org for o in report.orgs] == ["acme", "initech"]  # globex unchanged
    acme = report.orgs[0]
    assert [(e.name, e.why) for e in acme.added] == [("db-2", "enabled"), ("laptop-c", "new")]
    assert [(e.name, e.why) for e in acme.removed] == [("web-1", "disabled")]
    (db1,) = acme.changed
    assert db1.name == "db-1"
    assert [(f.field, f.before, f.after) for f in db1.fields] == [
        ("tags", ["db"], ["db", "prod"]), ("description", "", "primary")]
    assert acme.policy_changed and report.orgs[1].status == "added"


def test_reachability_changes():
    acme = review_diff(base_repo(), head_repo()).orgs[0]
    by_pair = {}
    for change in acme.reach:
        for s in change.srcs:
            for d in change.dsts:
                if s != d:
                    assert (s, d) not in by_pair, "a pair appears once"
                    by_pair[(s, d)] = change
    # eng gains tcp 6432 on db-1 (rule change) and tcp 5432,6432 on re-enabled db-2
    assert by_pair[("laptop-a", "db-1")].gained == Access(tcp=ports(6432))
    assert by_pair[("laptop-a", "db-2")].gained == Access(tcp=ports(5432, 6432), icmp=True)
    # laptop-c (bob, eng) is new: everything it gets is gained
    assert by_pair[("laptop-c", "db-1")].gained == Access(tcp=ports(5432, 6432), icmp=True)
    # web-1 disabled: everything it had is lost
    assert by_pair[("laptop-a", "web-1")].lost == Access(tcp=ports(22, (8000, 8100)), icmp=True)
    assert by_pair[("web-1", "relay-1")].lost == Access(udp=ports(53), icmp=True)
    assert ("laptop-a", "laptop-b") not in by_pair  # unchanged icmp
    # initech is new: its single device has no pair
    assert review_diff(base_repo(), head_repo()).orgs[1].reach == ()


def test_reachability_diff_matches_brute_force():
    from reconciler.policy import reachability

    b, h = base_repo().orgs["acme"], head_repo().orgs["acme"]
    mb, mh = reachability(b), reachability(h)
    names = sorted(set(mb.devices) | set(mh.devices))
    want = {(s, d): (mh.get(s, d) - mb.get(s, d), mb.get(s, d) - mh.get(s, d))
            for s in names for d in names if s != d and mb.get(s, d) != mh.get(s, d)}
    got = {(s, d): (c.gained, c.lost) for c in review_diff(base_repo(), head_repo()).orgs[0].reach
           for s in c.srcs for d in c.dsts if s != d}
    assert got == want


def test_no_changes():
    report = review_diff(base_repo(), base_repo())
    assert report.empty
    assert "**No changes.**" in render_markdown(report)
    assert "No changes." in render_text(report)
    assert json.loads(render_json(report))["changed"] is False


def test_org_field_and_removed_org():
    head = base_repo()
    acme = head.orgs["acme"]
    acme2 = structs.replace(acme, organization=Organization(
        name="acme", cidr_v4="10.10.0.0/23", owners=("alice",)))
    report = review_diff(base_repo(), repo(acme2, commit="c" * 40))
    assert [(o.org, o.status) for o in report.orgs] == [("acme", "changed"),
                                                        ("globex", "removed")]
    assert report.orgs[0].org_fields[0].field == "cidr_v4"
    globex_plan = report.orgs[1]
    assert [e.why for e in globex_plan.removed] == ["deleted", "deleted"]
    assert globex_plan.reach[0].lost.is_all


def test_base_none_means_everything_is_new():
    report = review_diff(None, base_repo())
    assert report.base_commit is None
    assert {o.status for o in report.orgs} == {"added"}
    assert "`nothing` → `aaaaaaaaaaaa`" in render_markdown(report)


@pytest.mark.parametrize("name,render", [
    ("plan.md", render_markdown), ("plan.txt", render_text), ("plan.json", render_json)])
def test_golden(name, render):
    check_golden(name, render(review_diff(base_repo(), head_repo())))


def test_markdown_caps_rows_and_escapes_pipes():
    devices = tuple(dev(f"n{i:03d}", f"u{i}", f"10.10.{i // 250}.{i % 250 + 2}")
                    for i in range(MAX_ROWS + 20))
    rules = tuple(Rule((f"user:u{i}",), (f"user:u{i + 1}",), "tcp", ports(i + 1), "", i)
                  for i in range(MAX_ROWS + 19))
    head = org_state(devices=devices, policy=Policy(rules=rules), cidr="10.10.0.0/16")
    base = org_state(devices=devices, policy=Policy(), cidr="10.10.0.0/16")
    md = render_markdown(review_diff(repo(base), repo(head)))
    assert "_…and 19 more rows; run `meshops plan --format json`._" in md
    assert md.count("\n| `n") == MAX_ROWS
    desc = structs.replace(devices[0], description="a | b")
    md2 = render_markdown(review_diff(repo(base), repo(org_state(
        devices=(desc,) + devices[1:], policy=Policy(), cidr="10.10.0.0/16"))))
    assert "| changed | `n000` | description: (none) → a \\| b |" in md2
