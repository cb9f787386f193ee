"""The agent on its per-device view (agent.view): views signed by the hub's own
code (hub.views, real Ed25519), served by a fake transport."""

from __future__ import annotations

import os

import pytest

from reconciler.agent.reconcile import reconcile_once
from reconciler.agent.state import StateDir
from reconciler.converge import AddPeer, RemovePeer, UpdatePeer
from reconciler.errors import FetchError, ManifestRefused
from reconciler.hub.views import Views
from reconciler.model.endpoints import EndpointFeed
from reconciler.pki.view import HeldView
from reconciler.structs import replace

from .helpers import NOW, FakeBackend, FakeFetch, Org, device, write_agent

ORG = Org()
HUB = "https://hub.example:8443"
VIEW = f"{HUB}/v1/orgs/acme/devices/alpha/view"
CERT = f"{HUB}/v1/orgs/acme/devices/alpha/cert"


class ViewHub(FakeFetch):
    """Answers view requests from a real ``hub.views.Views``."""

    def __init__(self, views: Views) -> None:
        super().__init__({CERT: b'{"cert": "-----BEGIN CERTIFICATE-----\\nx\\n", "ca": ""}'})
        self.views = views
        self.down = False
        self.snapshots = 0
        self.force_start: tuple[int, int] | None = None  # answer a delta from here instead

    def get(self, url, *, etag=None, wait=None, params=None, kind="manifest"):
        from reconciler.agent.fetch import Response

        if not url.startswith(VIEW):
            return super().get(url, etag=etag, wait=wait, params=params, kind=kind)
        self.calls.append((url, etag, wait))
        if self.down:
            raise FetchError(f"{url}: connection refused")
        if "?" not in url:
            self.snapshots += 1
            return Response(200, self.views.snapshot("acme", "alpha", (ORG.key,)).body, None)
        query = dict(p.split("=") for p in url.split("?", 1)[1].split("&"))
        start = (int(query["serial"]), int(query["revision"]))
        if start == self.views.position("acme"):
            return Response(304, b"", None)
        answer, _ = self.views.delta("acme", "alpha", self.force_start or start, (ORG.key,))
        if answer is None:
            self.snapshots += 1
            answer = self.views.snapshot("acme", "alpha", (ORG.key,))
        return Response(200, answer.body, None)


def _devices(n: int = 30):
    return [device("alpha", 1, "10.77.0.1")] + [
        device(f"peer{i:02d}", i + 2, f"10.77.0.{i + 2}") for i in range(n)]


@pytest.fixture
def world(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "device.crt").write_text("cert")
    config = write_agent(tmp_path, ORG, hub=HUB)
    views = Views()
    devices = _devices()
    views.served("acme", ORG.manifest(devices, serial=1))
    views.feed_built("acme", EndpointFeed("acme", 1, int(NOW), ()))
    return config, views, ViewHub(views), devices


def run(config, fetch, backend):
    return reconcile_once(config, fetch=fetch, backend=backend, now=NOW)


def _mtimes(state):
    return {p.name: p.stat().st_mtime_ns for p in state.iterdir()}


def test_snapshot_then_noop_then_one_peer_delta_is_one_peer_change(world, tmp_path) -> None:
    config, views, hub, devices = world
    backend = FakeBackend()
    first = run(config, hub, backend)
    assert first.serial == 1 and len(first.peers) == 30
    state = tmp_path / "state"
    view = state / "view.json"
    assert view.stat().st_mode & 0o777 == 0o600
    assert view.read_bytes().startswith(b"sha256 ")
    assert not (state / "manifest.dsse").exists() and not (state / "feed.json").exists()
    applies = len(backend.applied)
    second = run(config, hub, backend)  # 304: nothing changed
    assert second.operations == () and len(backend.applied) == applies
    before = _mtimes(state)  # (the second pass may still settle its peering memory)
    run(config, hub, backend)
    assert _mtimes(state) == before  # a no-op pass writes nothing
    devices[5] = replace(devices[5], endpoint="198.51.100.5:51820")
    views.served("acme", ORG.manifest(devices, serial=2))
    third = run(config, hub, backend)
    assert third.serial == 2
    peer_ops = [op for op in third.operations if isinstance(op, (AddPeer, RemovePeer,
                                                                 UpdatePeer))]
    assert len(peer_ops) == 1 and hub.snapshots == 1  # one delta, one peer changed
    assert StateDir(state).last_serial() == 2


def test_a_delta_that_does_not_chain_makes_the_pass_fetch_a_snapshot(world, tmp_path) -> None:
    config, views, hub, devices = world
    run(config, hub, FakeBackend())
    held = StateDir(tmp_path / "state").load_view("acme", "alpha")
    assert held is not None
    views.served("acme", ORG.manifest(devices[:-1], serial=2))
    # the hub answers with a delta from another position than the one the agent holds
    StateDir(tmp_path / "state").save_view(replace(held, revision=0))
    hub.force_start = (1, 1)
    backend = FakeBackend()
    result = run(config, hub, backend)
    assert result.serial == 2 and hub.snapshots == 2
    assert any("fetched a snapshot" in w for w in result.warnings)


def test_a_corrupt_view_file_is_replaced_by_a_snapshot(world, tmp_path) -> None:
    config, _views, hub, _ = world
    run(config, hub, FakeBackend())
    view = tmp_path / "state" / "view.json"
    data = bytearray(view.read_bytes())
    data[-10] ^= 0x01
    view.write_bytes(bytes(data))
    result = run(config, hub, FakeBackend())
    assert result.serial == 1 and hub.snapshots == 2
    assert any("view.json" in w and "SHA-256" in w for w in result.warnings)


def test_hub_down_keeps_the_held_view_until_it_expires(world, tmp_path) -> None:
    config, _views, hub, _ = world
    backend = FakeBackend()
    run(config, hub, backend)
    hub.down = True
    result = run(config, hub, backend)
    assert result.source == "cache" and result.operations == ()
    assert len(result.peers) == 30  # the last good tunnels stay
    with pytest.raises(FetchError, match="expired"):
        reconcile_once(config, fetch=hub, backend=backend, now=NOW + 8 * 86400)


def test_a_view_for_another_device_or_org_in_the_state_dir_is_ignored(world, tmp_path) -> None:
    config, _views, hub, _ = world
    run(config, hub, FakeBackend())
    state = StateDir(tmp_path / "state")
    held = state.load_view("acme", "alpha")
    assert isinstance(held, HeldView)
    state.save_view(replace(held, device="beta"))
    assert state.load_view("acme", "alpha") is None
    assert any("not of acme/alpha" in w for w in state.warnings)
    assert os.path.exists(tmp_path / "state" / "view.json")


def test_a_snapshot_that_moves_the_feed_back_is_refused(world, tmp_path) -> None:
    """A hub (or a replayed answer) that offers a snapshot at the held serial but
    an older feed revision is refused like an older feed, and the held view stays."""
    config, views, hub, devices = world
    views.feed_built("acme", EndpointFeed("acme", 5, int(NOW), ()))
    run(config, hub, FakeBackend())
    held = StateDir(tmp_path / "state").load_view("acme", "alpha")
    assert held is not None and held.position == (1, 5)
    old = Views()  # what the hub served at revision 1
    old.served("acme", ORG.manifest(devices, serial=1))
    old.feed_built("acme", EndpointFeed("acme", 1, int(NOW), ()))
    stale = ViewHub(old)
    stale.force_start = (9, 9)  # no delta from there: every answer is the old snapshot
    with pytest.raises(ManifestRefused) as info:
        run(config, stale, FakeBackend())
    assert info.value.reason == "rollback"
    assert StateDir(tmp_path / "state").load_view("acme", "alpha").position == (1, 5)


def test_a_view_whose_manifest_names_another_org_is_refused(world, tmp_path) -> None:
    from reconciler.agent.view import check_manifest

    config, _views, hub, _devices = world
    run(config, hub, FakeBackend())
    held = StateDir(tmp_path / "state").load_view("acme", "alpha")
    assert held is not None
    other = replace(held, manifest={**held.manifest, "org": "beta"})
    with pytest.raises(ManifestRefused) as info:
        check_manifest(other, NOW, 0, max_skew=None, checked=False)
    assert info.value.reason == "wrong-org"
