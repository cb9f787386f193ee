"""reconciler.net.nftables without root: parsing recorded ``nft -j`` output into
the normal form, rendering, and the error translation (fake runner)."""

from __future__ import annotations

import json
import subprocess

import pytest

from reconciler.errors import BackendError, BackendUnavailable
from reconciler.model.firewall import EMPTY, Chain, Match, NamedSet, Rule, Ruleset
from reconciler.net.nftables import INSTALL_HINT, Nftables, parse, render

# Recorded from `nft -j list table inet meshops` (nftables 1.0.6), trimmed.
LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "meshops", "handle": 1}},
    {"set": {"family": "inet", "name": "src", "table": "meshops", "type": "ipv4_addr",
             "handle": 4, "flags": ["interval"],
             "elem": ["10.10.0.3", "10.10.0.2", {"prefix": {"addr": "10.10.1.0", "len": 28}},
                      {"prefix": {"addr": "10.10.1.16", "len": 28}}]}},
    {"chain": {"family": "inet", "table": "meshops", "name": "input", "handle": 1,
               "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "meshops", "name": "mesh_in", "handle": 2}},
    {"rule": {"family": "inet", "table": "meshops", "chain": "input", "handle": 7, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wg0"}},
        {"jump": {"target": "mesh_in"}}]}},
    {"rule": {"family": "inet", "table": "meshops", "chain": "mesh_in", "handle": 8, "expr": [
        {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                   "right": ["related", "established"]}}, {"accept": None}]}},
    {"rule": {"family": "inet", "table": "meshops", "chain": "mesh_in", "handle": 13,
              "comment": "rule 0 web", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": "@src"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                   "right": {"set": [{"range": [8000, 8100]}, 22]}}}, {"accept": None}]}},
    {"rule": {"family": "inet", "table": "meshops", "chain": "mesh_in", "handle": 15, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                   "right": {"set": ["udp", "tcp"]}}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                   "right": 53}}, {"accept": None}]}},
    {"rule": {"family": "inet", "table": "meshops", "chain": "mesh_in", "handle": 18, "expr": [
        {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": "@src"}}, {"accept": None}]}},
    {"rule": {"family": "inet", "table": "meshops", "chain": "mesh_in", "handle": 21,
              "expr": [{"drop": None}]}},
]}

EXPECTED = Ruleset.of(
    [NamedSet("src", "ipv4_addr", ("10.10.0.2", "10.10.0.3", "10.10.1.0/28", "10.10.1.16/28"),
              interval=True)],
    [Chain("input", (Rule((Match("iifname", ("wg0",)),), "jump mesh_in"),), hook="input"),
     Chain("mesh_in", (
         Rule((Match("ct state", ("established", "related")),), "accept"),
         Rule((Match("ip saddr", ("@src",)), Match("tcp dport", ("22", "8000-8100"))), "accept"),
         Rule((Match("meta l4proto", ("tcp", "udp")), Match("th dport", ("53",))), "accept"),
         Rule((Match("ip daddr", ("@src",), negate=True),), "accept"),
         Rule((), "drop")))])


def test_parse_is_the_normal_form():
    assert parse(json.dumps(LISTING)) == EXPECTED


def test_parse_keeps_comments_but_does_not_compare_them():
    rule = parse(json.dumps(LISTING)).chain("mesh_in").rules[1]
    assert rule.comment == "rule 0 web"


@pytest.mark.parametrize("stmt", [
    {"counter": {"packets": 0, "bytes": 0}},
    {"log": {"prefix": "x"}},
    {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 1}},
])
def test_foreign_statements_never_compare_equal(stmt):
    doc = json.loads(json.dumps(LISTING))
    doc["nftables"][-1]["rule"]["expr"].insert(0, stmt)
    assert parse(json.dumps(doc)) != EXPECTED


@pytest.mark.parametrize("change", [
    {"flags": []}, {"flags": ["interval", "timeout"]}, {"type": "inet_service"},
    {"elem": ["10.10.0.2", "10.10.0.3", {"range": ["10.10.1.0", "10.10.1.31"]}]},
    {"elem": ["10.10.0.2", "10.10.0.3", {"prefix": {"addr": "10.10.1.0", "len": 28}},
              {"elem": {"val": "10.10.1.16", "timeout": 5}}]},
])
def test_foreign_sets_never_compare_equal(change):
    doc = json.loads(json.dumps(LISTING))
    doc["nftables"][2]["set"].update(change)
    assert parse(json.dumps(doc)).set("src") != EXPECTED.set("src")


def test_render_replaces_atomically_and_names_no_other_table():
    text = render(EXPECTED)
    lines = text.splitlines()
    assert lines[:3] == ["table inet meshops {}", "delete table inet meshops",
                         "table inet meshops {"]
    assert {line.split()[1] for line in lines if line.startswith("table")} == {"inet"}
    assert "\t\tip saddr @src tcp dport { 22, 8000-8100 } accept" in lines
    assert "\t\tip daddr != @src accept" in lines
    assert "\t\tct state established,related accept" in lines
    assert render(EMPTY) == "table inet meshops {}\ndelete table inet meshops\n"


def test_render_refuses_unsafe_text():
    bad = Ruleset.of([], [Chain("input", (Rule((Match("iifname", ('x" accept',)),), "drop"),))])
    with pytest.raises(ValueError, match="refusing"):
        render(bad)


class FakeRun:
    def __init__(self, rc: int = 0, stdout: str = "", stderr: str = "",
                 exc: Exception | None = None) -> None:
        self.result = (rc, stdout, stderr)
        self.exc = exc
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, cmd: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        self.calls.append((cmd, stdin))
        if self.exc:
            raise self.exc
        return subprocess.CompletedProcess(cmd, *self.result)


def test_observe_absent_table_is_empty():
    run = FakeRun(1, stderr="Error: No such file or directory\nlist table inet meshops\n")
    assert Nftables("ns1", run=run, nft="/usr/sbin/nft").observe() == EMPTY
    assert run.calls[0][0] == ["nsenter", "--net=/run/netns/ns1", "/usr/sbin/nft", "-j",
                               "list", "table", "inet", "meshops"]


def test_apply_sends_the_script_on_stdin():
    run = FakeRun()
    Nftables(run=run, nft="nft").apply(EXPECTED)
    assert run.calls == [(["nft", "-f", "-"], render(EXPECTED))]


@pytest.mark.parametrize(("rc", "stderr", "exc", "kind", "text"), [
    (1, "/dev/stdin:9:3-9: Error: No such file or directory; did you mean set 'x'?", None,
     BackendError, "refused by nft, nothing changed: /dev/stdin:9:3-9"),
    (1, "Error: Could not process rule: Operation not permitted", None, BackendError,
     "CAP_NET_ADMIN"),
    (1, "Error: Could not process rule: Operation not supported", None, BackendError,
     "no nf_tables support"),
    (1, 'Cannot open network namespace "x": No such file or directory', None,
     BackendUnavailable, "namespace does not exist"),
    (1, "nsenter: cannot open /run/netns/x: No such file or directory", None,
     BackendUnavailable, "namespace does not exist"),
    (0, "", FileNotFoundError("nft"), BackendError, "apt-get install nftables"),
    (0, "", subprocess.TimeoutExpired("nft", 30), BackendUnavailable, "did not answer"),
])
def test_errors_are_translated(rc, stderr, exc, kind, text):
    nft = Nftables("x", run=FakeRun(rc, stderr=stderr, exc=exc), nft="nft")
    with pytest.raises(kind, match=text):
        nft.apply(EXPECTED)


def test_missing_binary_names_the_package(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda *a, **k: None)
    with pytest.raises(BackendError) as info:
        Nftables(run=FakeRun()).observe()
    assert str(info.value) == INSTALL_HINT


def test_unreadable_listing_is_an_error():
    with pytest.raises(BackendError, match="cannot read the nftables table back"):
        Nftables(run=FakeRun(0, stdout="not json"), nft="nft").observe()
