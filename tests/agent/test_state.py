"""The agent's state dir: typed loading; a corrupt file counts as absent, with a
warning naming it; the rollback floor survives a corrupt meta file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from reconciler.agent import state as state_mod
from reconciler.agent.state import (
    APPLIED,
    DISCOVERY,
    FEED,
    MANIFEST,
    META,
    PEERING,
    CachedManifest,
    StateDir,
)

from .helpers import NOW, FakeBackend, FakeFetch, Org, device, write_agent

ORG = Org()
GOOD = {
    APPLIED: {"org": "acme", "device": "alpha", "interface": "mo-acme", "serial": 3,
              "commit": "abc", "not_after": 99, "member": True, "relay": False,
              "addresses": ["10.77.0.1/24"], "listen_port": 51820,
              "peers": [{"name": "beta", "public_key": "k", "tunnel_ips": ["10.77.0.2"],
                         "path": "direct", "via": None, "endpoint": None}]},
    PEERING: {"version": 1, "paths": {"beta": {"mode": "direct", "since": 1.5, "failures": 0,
                                               "retry_at": 0.0}},
              "relays": {}, "liveness": {"beta": [10, 1.5]},
              "situation": {"beta": [None, "unknown", "203.0.113.2", "independent"]}},
    FEED: {"org": "acme", "revision": 4, "generated_at": 5,
           "entries": [{"device": "beta", "mapping": "independent", "public_ip": None,
                        "updated_at": 5,
                        "candidates": [{"kind": "stun", "address": "203.0.113.2:1"}]}]},
    DISCOVERY: {"candidates": [], "mapping": "unknown", "public_ip": None,
                "local_ip": "10.1.0.1", "checked": []},
}
LOADERS = {APPLIED: "load_applied", PEERING: "load_peering", FEED: "load_feed",
           DISCOVERY: "load_discovery"}
ABSENT = {APPLIED: None, PEERING: {}, FEED: None, DISCOVERY: None}

# wrong types, one per file and a few each: what a bug, a bad edit or bit rot leaves
WRONG = [
    (APPLIED, [1, 2]),
    (APPLIED, {"serial": "3"}),
    (APPLIED, {"peers": [{"name": "beta"}]}),
    (APPLIED, {"peers": [{"name": "beta", "path": "direct", "tunnel_ips": "10.77.0.2"}]}),
    (APPLIED, {"member": "yes"}),
    (PEERING, {"paths": {"beta": {"mode": 1, "since": 0}}}),
    (PEERING, {"paths": []}),
    (PEERING, {"liveness": {"beta": [1]}}),
    (PEERING, {"relays": {"r": {"since": "now"}}}),
    (PEERING, {"changed_at": {"beta": True}}),
    (FEED, {"org": "acme", "revision": "4", "generated_at": 5, "entries": []}),
    (FEED, {"org": "acme", "revision": 4, "generated_at": 5, "entries": [{"device": 1}]}),
    (FEED, {"org": "acme"}),
    (DISCOVERY, {"candidates": [{"kind": "stun"}]}),
    (DISCOVERY, {"checked": "203.0.113.1"}),
    (DISCOVERY, "text"),
]


def test_roundtrip_and_modes(tmp_path) -> None:
    state = StateDir(tmp_path / "s")
    assert state.load_manifest() is None and state.last_serial() == 0
    envelope = ORG.sign(ORG.manifest([device("alpha", 1, "10.77.0.1")], serial=9))
    state.save_manifest(CachedManifest(envelope, 9, "abc", 100, '"9"'))
    assert state.load_manifest() == CachedManifest(envelope, 9, "abc", 100, '"9"')
    assert state.last_serial() == 9
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "s" / META).st_mode) == 0o600
    for name, doc in GOOD.items():
        getattr(state, "save_" + LOADERS[name][5:])(doc)
        assert getattr(state, LOADERS[name])() == doc
    assert state.warnings == []


@pytest.mark.parametrize("name,doc", WRONG)
def test_wrong_types_count_as_absent_with_a_warning(tmp_path, name, doc) -> None:
    """peering.json and feed.json are typed by their own readers (agent.memory,
    endpoints.feed_from_dict) in the pass's gather step; the others here."""
    (tmp_path / name).write_text(json.dumps(doc))
    state = StateDir(tmp_path)
    if name in (PEERING, FEED):
        from reconciler.agent.gather import read_memory_and_feed
        from reconciler.agent.memory import Memory

        warnings: list[str] = []
        memory, feed, _ = read_memory_and_feed(state, warnings)
        assert (memory, feed) == (Memory(), None)
        found = warnings + state.warnings
    else:
        assert getattr(state, LOADERS[name])() == ABSENT[name]
        found = state.warnings
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / name}: wrong types")
    assert "treated as absent" in found[0]


@pytest.mark.parametrize("content,problem", [
    (b"{garbage", "not JSON"),
    (b"", "not JSON"),
    (b"\xff{}", "not UTF-8"),
    (b"[" * 200_000 + b"]" * 200_000, "nested 200000 levels deep"),
    (b'{"a":' * 17 + b"1" + b"}" * 17, "nested 17 levels deep"),
    (b'{"serial": 1' + b"0" * 5000 + b"}", "not acceptable JSON"),
    (b'{"x": Infinity}', "not acceptable JSON"),
])
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_corrupt_json_counts_as_absent(tmp_path, name, content, problem) -> None:
    (tmp_path / name).write_bytes(content)
    state = StateDir(tmp_path)
    assert getattr(state, LOADERS[name])() == ABSENT[name]
    assert len(state.warnings) == 1 and str(tmp_path / name) in state.warnings[0]
    assert problem in state.warnings[0]


def test_too_large_counts_as_absent(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(state_mod, "MAX_STATE_BYTES", 1000)
    (tmp_path / FEED).write_text(json.dumps({**GOOD[FEED], "pad": "x" * 2000}))
    state = StateDir(tmp_path)
    assert state.load_feed() is None
    assert "over the limit of 1000 bytes" in state.warnings[0]


def test_a_directory_where_a_file_should_be(tmp_path) -> None:
    for name in LOADERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "inside").write_text("kept")
    state = StateDir(tmp_path)
    for name, loader in LOADERS.items():
        assert getattr(state, loader)() == ABSENT[name]
    assert len(state.warnings) == 4
    assert all("a directory where a file should be" in w for w in state.warnings)
    # the next save heals it: the directory is moved aside (not deleted), the file written
    state.save_applied(GOOD[APPLIED])
    assert json.loads((tmp_path / APPLIED).read_text()) == GOOD[APPLIED]
    aside = [p for p in os.listdir(tmp_path) if p.startswith(f"{APPLIED}.corrupt-")]
    assert len(aside) == 1 and (tmp_path / aside[0] / "inside").read_text() == "kept"
    assert any("moved to" in w for w in state.warnings)


def test_a_fifo_does_not_block_and_counts_as_absent(tmp_path) -> None:
    os.mkfifo(tmp_path / DISCOVERY)
    state = StateDir(tmp_path)
    assert state.load_discovery() is None
    assert "not a regular file" in state.warnings[0]


def test_warnings_accumulate_per_instance_without_repeats(tmp_path) -> None:
    (tmp_path / APPLIED).write_text("{")
    (tmp_path / FEED).write_text("[]")
    state = StateDir(tmp_path)
    for _ in range(3):
        state.load_applied()
        state.load_feed()
    assert len(state.warnings) == 2
    assert StateDir(tmp_path).warnings == []  # another instance starts empty


# -- the cached manifest and the rollback floor ------------------------------------
def _saved(tmp_path, serial: int = 5) -> tuple[StateDir, bytes]:
    state = StateDir(tmp_path)
    envelope = ORG.sign(ORG.manifest([device("alpha", 1, "10.77.0.1")], serial=serial))
    state.save_manifest(CachedManifest(envelope, serial, "abc", int(NOW) + 99, '"5"'))
    return state, envelope


@pytest.mark.parametrize("content", [
    b"", b"{garbage", b"[]", b'{"payload": 1}', b"[" * 100_000,
    b'{"payload": "!!", "payloadType": "x", "signatures": [{"sig": "AA=="}]}',
    b'{"payload": "", "payloadType": "x", "signatures": []}',
])
def test_a_corrupt_manifest_dsse_is_no_cache_but_keeps_the_floor(tmp_path, content) -> None:
    _saved(tmp_path)
    (tmp_path / MANIFEST).write_bytes(content)
    fresh = StateDir(tmp_path)
    assert fresh.load_manifest() is None
    assert fresh.last_serial() == 5
    assert len(fresh.warnings) == 1
    assert fresh.warnings[0].startswith(f"{tmp_path / MANIFEST}: not a DSSE envelope")


def test_a_manifest_dsse_directory_is_no_cache(tmp_path) -> None:
    _saved(tmp_path)
    (tmp_path / MANIFEST).unlink()
    (tmp_path / MANIFEST).mkdir()
    fresh = StateDir(tmp_path)
    assert fresh.load_manifest() is None and fresh.last_serial() == 5
    assert "a directory where a file should be" in fresh.warnings[0]


@pytest.mark.parametrize("meta", [b"{garbage", b'{"serial": "5"}', b'{"serial": true}',
                                  b"[5]", b'{"commit": "abc"}'])
def test_a_corrupt_meta_recovers_the_floor_from_the_envelope(tmp_path, meta) -> None:
    _saved(tmp_path, serial=5)
    (tmp_path / META).write_bytes(meta)
    fresh = StateDir(tmp_path)
    assert fresh.load_manifest() is None  # no etag, no trusted meta: fetch afresh
    assert fresh.last_serial() == 5
    assert any("recovered as serial 5" in w for w in fresh.warnings)
    assert any(w.startswith(f"{tmp_path / META}:") for w in fresh.warnings)


def test_a_corrupt_meta_recovers_the_floor_from_applied(tmp_path) -> None:
    _saved(tmp_path, serial=5)
    (tmp_path / MANIFEST).write_bytes(b"junk")
    (tmp_path / META).write_bytes(b"junk")
    (tmp_path / APPLIED).write_text(json.dumps({**GOOD[APPLIED], "serial": 4}))
    assert StateDir(tmp_path).last_serial() == 4


def test_a_lost_floor_is_said_out_loud(tmp_path) -> None:
    (tmp_path / META).write_bytes(b"junk")
    state = StateDir(tmp_path)
    assert state.last_serial() == 0
    assert any("only expiry limits replays" in w for w in state.warnings)


def test_what_the_real_pass_writes_loads_without_warnings(tmp_path) -> None:
    """The schemas here mirror the writers in agent.reconcile, agent.paths and
    agent.endpoints: a real pass in hub mode writes every file, and every file
    reads back clean."""
    from reconciler.agent.reconcile import reconcile_once
    from reconciler.pki.envelope import sign_envelope

    config = write_agent(tmp_path, ORG, hub="https://hub.example:8443")
    manifest = ORG.manifest([device("alpha", 1, "10.77.0.1"),
                             device("beta", 2, "10.77.0.2", endpoint="198.51.100.2:51820")])
    feed = {"org": "acme", "revision": 2, "generated_at": int(NOW), "entries": [
        {"device": "beta", "mapping": "independent", "public_ip": "203.0.113.2",
         "updated_at": int(NOW), "candidates": [{"kind": "stun",
                                                  "address": "203.0.113.2:40000"}]}]}
    fetch = FakeFetch({config.source_url: ORG.sign(manifest), config.feed_url: sign_envelope(
        json.dumps(feed).encode(), "application/vnd.meshops.feed+json", ORG.key)})
    backend = FakeBackend()
    for step in range(2):
        reconcile_once(config, fetch=fetch, backend=backend, now=NOW + step,
                       local_ip=lambda: "10.1.0.1")
    state = StateDir(config.state_dir)
    assert state.load_manifest() is not None and state.last_serial() == 1
    for name, loader in LOADERS.items():
        assert (tmp_path / "state" / name).exists(), name
        assert getattr(state, loader)(), name
    assert state.warnings == []
