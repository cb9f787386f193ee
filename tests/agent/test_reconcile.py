"""reconcile_once with a fake fetch and a fake backend: flow, idempotence,
drift, dry-run, refusals, fail-static and the hub's feed/report."""

from __future__ import annotations

import json

import pytest

from reconciler.agent.reconcile import reconcile_once
from reconciler.agent.state import StateDir
from reconciler.converge import AddPeer, RemovePeer, RemoveRoute, SetListenPort
from reconciler.errors import FetchError, ManifestRefused, NotConverged
from reconciler.model.endpoints import Candidate, EndpointFeed, FeedEntry
from reconciler.model.wg import ObservedInterface
from reconciler.pki.envelope import sign_envelope
from reconciler.structs import replace

from .helpers import NOW, FakeBackend, FakeFetch, Org, device, wg_keypair

ORG = Org()


def three(serial: int = 1, **kw):
    return ORG.manifest([
        device("alpha", 1, "10.77.0.1"),
        device("beta", 2, "10.77.0.2", endpoint="198.51.100.2:51820"),
        device("gamma", 3, "10.77.0.3", routes=("192.168.50.0/24",)),
    ], serial=serial, **kw)


@pytest.fixture
def agent(tmp_path):
    from .helpers import write_agent

    config = write_agent(tmp_path, ORG)
    fetch = FakeFetch({config.source_url: ORG.sign(three())})
    return config, fetch, FakeBackend()


def run(config, fetch, backend, now=NOW, **kw):
    return reconcile_once(config, fetch=fetch, backend=backend, now=now, **kw)


def test_first_pass_converges_and_second_pass_is_a_noop(agent) -> None:
    config, fetch, backend = agent
    first = run(config, fetch, backend)
    assert first.applied == len(first.operations) > 0
    assert (first.serial, first.source, first.requeue_after) == (1, "fetched", None)
    assert set(backend.state.peers) == {wg_keypair(2)[1], wg_keypair(3)[1]}
    assert backend.state.addresses == ("10.77.0.1/24",)
    second = run(config, fetch, backend)
    assert (second.applied, second.operations, second.source) == (0, (), "unchanged")
    # creation goes in two phases (interface and port first, then the peers);
    # apply is never called for an empty plan
    assert len(backend.applied) == 2
    assert not any(isinstance(op, AddPeer) for op in backend.applied[0])
    assert all(isinstance(op, AddPeer) for op in backend.applied[1])
    applied = StateDir(config.state_dir).load_applied()
    assert applied["serial"] == 1 and [p["name"] for p in applied["peers"]] == ["beta", "gamma"]


def test_drift_is_corrected(agent) -> None:
    config, fetch, backend = agent
    run(config, fetch, backend)
    beta = wg_keypair(2)[1]
    peers = dict(backend.state.peers)
    peers[beta] = peers[beta].__class__(beta, ("10.99.0.0/16",), None, 0)
    stranger = wg_keypair(9)[1]
    peers[stranger] = peers[beta].__class__(stranger, ("10.77.0.9/32",))
    backend.state = replace(backend.state, peers=peers)
    result = run(config, fetch, backend)
    kinds = sorted(type(op).__name__ for op in result.operations)
    assert kinds == ["RemovePeer", "UpdatePeer"]
    assert run(config, fetch, backend).applied == 0


def test_dry_run_changes_nothing(agent) -> None:
    config, fetch, backend = agent
    result = run(config, fetch, backend, dry_run=True)
    assert result.operations and result.applied == 0
    assert backend.applied == []
    assert StateDir(config.state_dir).load_manifest() is None
    assert StateDir(config.state_dir).load_applied() is None


def test_refused_manifest_never_touches_the_interface(agent) -> None:
    config, fetch, backend = agent
    run(config, fetch, backend)
    before, applies = backend.state, len(backend.applied)
    fetch.bodies[config.source_url] = Org(key_seed=99).sign(three(serial=2))  # unknown key
    with pytest.raises(ManifestRefused) as info:
        run(config, fetch, backend)
    assert info.value.reason == "unknown-key"
    assert backend.state == before and len(backend.applied) == applies
    assert StateDir(config.state_dir).last_serial() == 1


def test_rollback_is_refused_and_same_serial_reapplies(agent) -> None:
    config, fetch, backend = agent
    fetch.bodies[config.source_url] = ORG.sign(three(serial=5))
    run(config, fetch, backend)
    fetch.bodies[config.source_url] = ORG.sign(three(serial=4))
    with pytest.raises(ManifestRefused) as info:
        run(config, fetch, backend)
    assert info.value.reason == "rollback"
    # the very manifest already applied (serial == last) is accepted as current
    fetch.bodies[config.source_url] = ORG.sign(three(serial=5))
    assert run(config, fetch, backend).serial == 5


def test_same_serial_with_other_content_is_refused(agent) -> None:
    config, fetch, backend = agent
    fetch.bodies[config.source_url] = ORG.sign(three(serial=5))
    run(config, fetch, backend)
    other = ORG.manifest([device("alpha", 1, "10.77.0.1"), device("evil", 8, "10.77.0.8")],
                         serial=5)
    fetch.bodies[config.source_url] = ORG.sign(other)
    with pytest.raises(ManifestRefused, match="already applied with other content"):
        run(config, fetch, backend)
    assert wg_keypair(8)[1] not in backend.state.peers


def test_new_serial_moves_the_rollback_floor(agent) -> None:
    config, fetch, backend = agent
    run(config, fetch, backend)
    fetch.bodies[config.source_url] = ORG.sign(ORG.manifest(
        [device("alpha", 1, "10.77.0.1"), device("beta", 2, "10.77.0.2")], serial=2))
    result = run(config, fetch, backend)
    assert [type(op) for op in result.operations] == [RemoveRoute, RemovePeer]
    assert StateDir(config.state_dir).last_serial() == 2


def test_fail_static_reapplies_the_cached_manifest(agent) -> None:
    config, fetch, backend = agent
    run(config, fetch, backend)
    fetch.bodies[config.source_url] = FetchError("hub down")
    rebooted = FakeBackend()  # the interface is gone after a reboot
    result = run(config, fetch, rebooted, now=NOW + 3600)
    assert result.source == "cache" and result.serial == 1
    assert result.warnings and "re-applied the cached manifest" in result.warnings[0]
    assert rebooted.state.peers.keys() == backend.state.peers.keys()


def test_fail_static_refuses_an_expired_cache(agent) -> None:
    config, fetch, backend = agent
    run(config, fetch, backend)
    fetch.bodies[config.source_url] = FetchError("hub down")
    rebooted = FakeBackend()
    with pytest.raises(FetchError, match="expired"):
        run(config, fetch, rebooted, now=NOW + 8 * 86400)
    assert rebooted.applied == []


def test_unreachable_without_cache_is_temporary(agent) -> None:
    config, fetch, backend = agent
    fetch.bodies.clear()
    with pytest.raises(FetchError):
        run(config, fetch, backend)
    assert backend.applied == []


def test_expired_manifest_is_refused(agent) -> None:
    config, fetch, backend = agent
    with pytest.raises(ManifestRefused) as info:
        run(config, fetch, backend, now=NOW + 30 * 86400)
    assert info.value.reason == "expired"


def test_wrong_org_is_refused(agent) -> None:
    config, fetch, backend = agent
    fetch.bodies[config.source_url] = Org("other", key_seed=7).sign(
        Org("other").manifest([device("alpha", 1, "10.77.0.1")]))
    with pytest.raises(ManifestRefused) as info:
        run(config, fetch, backend)
    assert info.value.reason in ("wrong-org", "unknown-key")
    assert backend.applied == []


def test_not_converged_names_the_residual(agent) -> None:
    config, fetch, backend = agent
    backend.lose = {wg_keypair(3)[1]}
    with pytest.raises(NotConverged) as info:
        run(config, fetch, backend)
    assert [type(op) for op in info.value.residual] == [AddPeer]
    assert "gamma" in str(info.value)


def test_removed_device_drops_all_peers(agent) -> None:
    config, fetch, backend = agent
    run(config, fetch, backend)
    fetch.bodies[config.source_url] = ORG.sign(ORG.manifest(
        [device("beta", 2, "10.77.0.2"), device("gamma", 3, "10.77.0.3")], serial=2))
    result = run(config, fetch, backend)
    assert not result.member and backend.state.peers == {}
    assert any("not in manifest" in w for w in result.warnings)


def feed_envelope(revision: int, entries) -> bytes:
    doc = {"org": "acme", "revision": revision, "generated_at": int(NOW),
           "entries": entries}
    return sign_envelope(json.dumps(doc).encode(), "application/vnd.meshops.feed+json",
                         ORG.key)


def test_hub_mode_uses_the_feed_and_reports(tmp_path) -> None:
    from .helpers import write_agent

    config = write_agent(tmp_path, ORG, hub="https://hub.example:8443")
    feed = feed_envelope(3, [{"device": "gamma", "mapping": "independent",
                              "public_ip": "203.0.113.30", "updated_at": int(NOW),
                              "candidates": [{"kind": "local", "address": "10.1.0.3:51820"},
                                             {"kind": "stun",
                                              "address": "203.0.113.30:40000"}]}])
    fetch = FakeFetch({config.source_url: ORG.sign(three()), config.feed_url: feed})
    backend = FakeBackend()
    result = run(config, fetch, backend)
    assert result.feed_revision == 3
    gamma = backend.state.peers[wg_keypair(3)[1]]
    assert gamma.endpoint == "203.0.113.30:40000"
    assert fetch.posts and fetch.posts[0][0] == config.feed_url
    report = fetch.posts[0][1]
    assert report["device"] == "alpha" and report["serial"] == 1
    assert report["listen_port"] == 51820
    # the second pass sends If-None-Match and gets 304: nothing re-applied
    again = run(config, fetch, backend)
    assert again.applied == 0 and again.source == "unchanged"
    manifest_gets = [c for c in fetch.calls if c[0] == config.source_url]
    assert manifest_gets[-1][1] is not None  # the second manifest GET carried the ETag


def test_hub_mode_fetches_the_device_cert_and_pins_the_ca(tmp_path) -> None:
    import base64

    from reconciler.pki.envelope import trust_entry

    from .helpers import write_agent

    config = write_agent(tmp_path, ORG, hub="https://hub.example:8443")
    ca = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
    (tmp_path / "trust.json").write_text(json.dumps(
        {"orgs": {"acme": trust_entry([ORG.key.public_key()], ca)}}))
    cert_url = "https://hub.example:8443/v1/orgs/acme/devices/alpha/cert"
    pem = "-----BEGIN CERTIFICATE-----\n" + base64.b64encode(b"x").decode() + \
        "\n-----END CERTIFICATE-----\n"
    resets = []

    class Fetch(FakeFetch):
        def reset_tls(self):
            resets.append(1)

    fetch = Fetch({config.source_url: ORG.sign(three()),
                   cert_url: json.dumps({"cert": pem, "ca": ca}).encode()})
    run(config, fetch, FakeBackend())
    assert (tmp_path / "state" / "hub-ca.pem").read_text() == ca
    assert (tmp_path / "state" / "device.crt").read_text() == pem
    assert resets == [1, 1]  # the TLS context reloads the new CA pin, then the certificate
    run(config, fetch, FakeBackend())
    assert [c[0] for c in fetch.calls].count(cert_url) == 1  # unchanged manifest: no refetch


def _cert_pem(tag: bytes) -> str:
    import base64

    return ("-----BEGIN CERTIFICATE-----\n" + base64.b64encode(tag).decode()
            + "\n-----END CERTIFICATE-----\n")


def _cert_agent(tmp_path):
    from .helpers import write_agent

    config = write_agent(tmp_path, ORG, hub="https://hub.example:8443")
    cert_url = "https://hub.example:8443/v1/orgs/acme/devices/alpha/cert"
    return config, cert_url


def _cert_body(pem: str) -> bytes:
    return json.dumps({"cert": pem, "ca": "unused"}).encode()


def test_first_hub_run_fetches_the_device_cert_before_the_manifest(tmp_path) -> None:
    """The hub serves manifests over mTLS only: a device without ``device.crt``
    must get its (public) certificate first, or its first manifest GET is a 401."""
    config, cert_url = _cert_agent(tmp_path)
    fetch = FakeFetch({config.source_url: ORG.sign(three()), config.feed_url: feed_envelope(1, []),
                       cert_url: _cert_body(_cert_pem(b"1"))})
    result = run(config, fetch, FakeBackend())
    assert result.applied > 0 and result.warnings == ()
    urls = [c[0] for c in fetch.calls]
    assert urls.index(cert_url) < urls.index(config.source_url)
    assert urls.count(cert_url) == 1  # not fetched again after the manifest
    assert (tmp_path / "state" / "device.crt").read_text() == _cert_pem(b"1")


def test_a_new_manifest_refreshes_the_device_cert(tmp_path) -> None:
    config, cert_url = _cert_agent(tmp_path)
    fetch = FakeFetch({config.source_url: ORG.sign(three()), cert_url: _cert_body(_cert_pem(b"1"))})
    backend = FakeBackend()
    run(config, fetch, backend)
    fetch.bodies[cert_url] = _cert_body(_cert_pem(b"renewed"))  # the hub renewed it
    run(config, fetch, backend)  # same manifest (304): the certificate is not re-read
    assert (tmp_path / "state" / "device.crt").read_text() == _cert_pem(b"1")
    fetch.bodies[config.source_url] = ORG.sign(three(serial=2))
    assert run(config, fetch, backend).serial == 2
    assert (tmp_path / "state" / "device.crt").read_text() == _cert_pem(b"renewed")


def test_a_refused_manifest_request_refetches_a_renewed_cert_and_retries(tmp_path) -> None:
    """Away past its certificate's expiry, the device's manifest GET gets a 401:
    the agent fetches the hub's current (renewed) certificate and retries once."""
    from reconciler.errors import ConfigError

    config, cert_url = _cert_agent(tmp_path)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "device.crt").write_text(_cert_pem(b"expired"))
    envelope = ORG.sign(three())

    class Hub(FakeFetch):
        def get(self, url, *, etag=None, wait=None, params=None, kind="manifest"):
            if url == config.source_url and (state / "device.crt").read_text() != \
                    _cert_pem(b"renewed"):
                self.calls.append((url, etag, wait))
                raise ConfigError(f"{url}: HTTP 401: expired")
            return super().get(url, etag=etag, wait=wait, params=params, kind=kind)

    fetch = Hub({config.source_url: envelope, cert_url: _cert_body(_cert_pem(b"renewed"))})
    assert run(config, fetch, FakeBackend()).serial == 1
    # this fake hub has no view endpoint: the agent falls back to the org manifest
    urls = [c[0] for c in fetch.calls if not c[0].endswith("/view")]
    assert urls[:3] == [config.source_url, cert_url, config.source_url]
    # a refusal the certificate cannot fix (unchanged) is raised, not retried forever
    (state / "device.crt").write_text(_cert_pem(b"revoked"))
    fetch.bodies[cert_url] = _cert_body(_cert_pem(b"revoked"))
    with pytest.raises(ConfigError, match="401"):
        run(config, fetch, FakeBackend())


def test_discovery_is_rechecked_when_the_hub_sees_another_public_ip(tmp_path) -> None:
    from types import SimpleNamespace

    from .helpers import write_agent

    config = write_agent(tmp_path, ORG, hub="https://hub.example:8443")
    seen = {"ip": "198.51.100.1"}
    calls = []

    def discover(port, servers):
        calls.append(port)
        return SimpleNamespace(
            candidates=lambda: (Candidate("stun", f"{seen['ip']}:40000"),),
            mapping="independent", public_ip=seen["ip"])

    def feed(ip):
        return feed_envelope(1, [{"device": "alpha", "mapping": "independent",
                                  "public_ip": ip, "updated_at": int(NOW),
                                  "candidates": []}])

    fetch = FakeFetch({config.source_url: ORG.sign(three()),
                       config.feed_url: feed("198.51.100.1")})
    backend = FakeBackend()
    run(config, fetch, backend, discover=discover)
    run(config, fetch, backend, discover=discover)
    assert calls == [51820]  # the port was free only on the first pass
    report = fetch.posts[-1][1]
    assert {"kind": "stun", "address": "198.51.100.1:40000"} in report["candidates"]
    assert report["mapping"] == "independent"
    seen["ip"] = "203.0.113.9"  # the device moved; the hub saw the new address
    fetch.bodies[config.feed_url] = feed("203.0.113.9")
    run(config, fetch, backend, discover=discover)
    assert calls == [51820, 51820]


def test_hub_mode_feed_with_bad_signature_is_ignored(tmp_path) -> None:
    from .helpers import write_agent

    config = write_agent(tmp_path, ORG, hub="https://hub.example:8443")
    bad = sign_envelope(b"{}", "application/vnd.meshops.feed+json", Org(key_seed=55).key)
    fetch = FakeFetch({config.source_url: ORG.sign(three()), config.feed_url: bad})
    result = run(config, fetch, FakeBackend())
    assert result.feed_revision is None
    assert any("endpoint feed not used" in w for w in result.warnings)


def test_discovery_runs_only_while_the_port_is_free(agent) -> None:
    config, fetch, backend = agent
    calls = []

    def discover(port, servers):
        calls.append(port)

    run(config, fetch, backend, discover=discover)
    run(config, fetch, backend, discover=discover)
    assert calls == [51820]


def test_feed_model_roundtrip() -> None:
    from reconciler.agent.endpoints import feed_from_dict, feed_to_dict

    feed = EndpointFeed("acme", 4, 1, (FeedEntry("a", (Candidate("stun", "1.2.3.4:5"),),
                                                 "independent", "1.2.3.4", 9),))
    assert feed_from_dict(feed_to_dict(feed)) == feed


def _moving_discover(calls, box):
    from types import SimpleNamespace

    def discover(port, servers):
        calls.append(port)
        ip = box["ip"]
        return SimpleNamespace(
            candidates=lambda: (Candidate("local", f"{box['lan']}:51820"),),
            mapping=box["mapping"], public_ip=ip)

    return discover


def _hub_agent(tmp_path, feed_body=None):
    from .helpers import write_agent

    config = write_agent(tmp_path, ORG, hub="https://hub.example:8443")
    fetch = FakeFetch({config.source_url: ORG.sign(three())})
    if feed_body is not None:
        fetch.bodies[config.feed_url] = feed_body
    return config, fetch


def test_a_new_source_address_rediscovers_at_once_and_reports_in_the_same_pass(tmp_path) -> None:
    config, fetch = _hub_agent(tmp_path)
    resets = []
    fetch.reset_tls = lambda: resets.append(1)  # type: ignore[attr-defined]
    box = {"ip": "198.51.100.50", "lan": "10.10.1.12", "mapping": "independent"}
    calls: list[int] = []
    discover = _moving_discover(calls, box)
    backend = FakeBackend()
    here = {"ip": "10.10.1.12"}
    run(config, fetch, backend, discover=discover, local_ip=lambda: here["ip"], wait=30)
    run(config, fetch, backend, discover=discover, local_ip=lambda: here["ip"], wait=30)
    assert calls == [51820] and resets == []
    rebinds = len(backend.applied)
    # unplugged from site A, plugged into site B (symmetric NAT) with a new LAN IP
    box.update(ip="198.51.100.60", lan="10.10.2.12", mapping="dependent")
    here["ip"] = "10.10.2.12"
    fetch.calls.clear()
    run(config, fetch, backend, discover=discover, local_ip=lambda: here["ip"], wait=30)
    assert calls == [51820, 51820] and resets == [1]
    assert [wait for url, _, wait in fetch.calls if url == config.source_url] == [None]
    report = fetch.posts[-1][1]
    assert report["mapping"] == "dependent"
    assert {"kind": "local", "address": "10.10.2.12:51820"} in report["candidates"]
    assert not any(c["kind"] == "stun" for c in report["candidates"])  # old NAT's are gone
    assert any(isinstance(op, SetListenPort) for ops in backend.applied[rebinds:] for op in ops)
    saved = StateDir(config.state_dir).load_discovery()
    assert saved["local_ip"] == "10.10.2.12" and saved["public_ip"] == "198.51.100.60"
    # the next pass is quiet: no re-discovery, no operations
    again = run(config, fetch, backend, discover=discover, local_ip=lambda: here["ip"])
    assert calls == [51820, 51820] and again.applied == 0


def test_a_reflected_address_discovery_does_not_know_triggers_one_recheck(tmp_path) -> None:
    def feed(rev, reflected):
        return feed_envelope(rev, [{"device": "alpha", "mapping": "independent",
                                    "public_ip": "198.51.100.50", "updated_at": int(NOW),
                                    "candidates": [{"kind": "reflected", "address": a}
                                                   for a in reflected]}])

    config, fetch = _hub_agent(tmp_path, feed(1, ["198.51.100.50:51820"]))
    box = {"ip": "198.51.100.50", "lan": "10.10.1.12", "mapping": "independent"}
    calls: list[int] = []
    discover = _moving_discover(calls, box)
    backend = FakeBackend()
    here = lambda: "10.10.1.12"
    run(config, fetch, backend, discover=discover, local_ip=here)
    run(config, fetch, backend, discover=discover, local_ip=here)
    assert calls == [51820]  # the reflection matches what discovery knows
    # a peer's WireGuard now sees this device at another public IP
    fetch.bodies[config.feed_url] = feed(2, ["203.0.113.77:41000", "198.51.100.50:51820"])
    run(config, fetch, backend, discover=discover, local_ip=here)
    assert calls == [51820, 51820]  # re-checked at once ...
    saved = StateDir(config.state_dir).load_discovery()
    assert saved["checked"] == ["203.0.113.77"]
    fetch.bodies[config.feed_url] = feed(3, ["203.0.113.77:41000", "198.51.100.50:51820"])
    run(config, fetch, backend, discover=discover, local_ip=here)
    run(config, fetch, backend, discover=discover, local_ip=here)
    assert calls == [51820, 51820]  # ... once: a stale reflection does not loop


def test_a_pass_on_the_cached_manifest_keeps_the_last_feed(tmp_path) -> None:
    feed = feed_envelope(3, [{"device": "gamma", "mapping": "independent",
                              "public_ip": "203.0.113.30", "updated_at": int(NOW),
                              "candidates": [{"kind": "stun",
                                              "address": "203.0.113.30:40000"}]}])
    config, fetch = _hub_agent(tmp_path, feed)
    backend = FakeBackend()
    run(config, fetch, backend)
    fetch.bodies[config.source_url] = FetchError("The read operation timed out")
    result = run(config, fetch, backend)
    assert result.source == "cache" and result.applied == 0
    assert backend.state.peers[wg_keypair(3)[1]].endpoint == "203.0.113.30:40000"


def test_a_relay_reflects_its_peers_dated_by_their_traffic(tmp_path) -> None:
    from reconciler.structs import replace

    config, fetch = _hub_agent(tmp_path)
    fetch.bodies[config.source_url] = ORG.sign(ORG.manifest([
        device("alpha", 1, "10.77.0.1", relay=True, endpoint="203.0.113.1:51820"),
        device("beta", 2, "10.77.0.2", endpoint="198.51.100.2:51820"),
        device("gamma", 3, "10.77.0.3")]))
    backend = FakeBackend()
    run(config, fetch, backend, local_ip=lambda: "10.1.0.1")
    beta, gamma = wg_keypair(2)[1], wg_keypair(3)[1]
    peers = dict(backend.state.peers)
    peers[beta] = replace(peers[beta], last_handshake=NOW - 100, rx_bytes=10)
    peers[gamma] = replace(peers[gamma], last_handshake=NOW - 100, rx_bytes=10)  # no endpoint
    backend.state = replace(backend.state, peers=peers)
    run(config, fetch, backend, now=NOW + 5, local_ip=lambda: "10.1.0.1")
    peers[beta] = replace(peers[beta], rx_bytes=99)  # traffic, no new handshake
    backend.state = replace(backend.state, peers=peers)
    run(config, fetch, backend, now=NOW + 9, local_ip=lambda: "10.1.0.1")
    # beta is reflected, dated by its traffic; gamma has no endpoint to report
    assert fetch.posts[-1][1]["observations"] == [
        {"peer": "beta", "endpoint": "198.51.100.2:51820", "last_handshake": int(NOW + 9)}]


def test_a_device_that_is_not_a_relay_reports_no_observations(tmp_path) -> None:
    from reconciler.structs import replace

    config, fetch = _hub_agent(tmp_path)
    backend = FakeBackend()
    run(config, fetch, backend, local_ip=lambda: "10.1.0.1")
    beta = wg_keypair(2)[1]
    peers = dict(backend.state.peers)
    peers[beta] = replace(peers[beta], last_handshake=NOW - 1, rx_bytes=10)
    backend.state = replace(backend.state, peers=peers)
    run(config, fetch, backend, now=NOW + 5, local_ip=lambda: "10.1.0.1")
    assert fetch.posts[-1][1]["observations"] == []  # the hub takes them from relays only


def test_a_move_is_detected_without_stun_too(tmp_path) -> None:
    config, fetch = _hub_agent(tmp_path)
    backend = FakeBackend()
    here = {"ip": "10.10.1.12"}
    run(config, fetch, backend, local_ip=lambda: here["ip"])
    run(config, fetch, backend, local_ip=lambda: here["ip"])
    before = len(backend.applied)
    here["ip"] = "10.10.2.12"
    run(config, fetch, backend, local_ip=lambda: here["ip"])
    assert [op for ops in backend.applied[before:] for op in ops] == [
        SetListenPort(config.interface, 51820)]  # WireGuard re-binds its port
    run(config, fetch, backend, local_ip=lambda: here["ip"])
    assert len(backend.applied) == before + 1  # once


def _x509_pem(not_after: float) -> str:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.x509.oid import NameOID

    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alpha")])
    end = dt.datetime.fromtimestamp(not_after, dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(end - dt.timedelta(days=30)).not_valid_after(end)
            .sign(key, None))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_an_expired_device_cert_is_dropped_and_fetched_without_it(tmp_path) -> None:
    """The hub's TLS handshake refuses an expired client certificate, so the agent
    must not present it: it deletes the file (the transport then sends none),
    fetches the renewed one and only then asks for the manifest."""
    config, cert_url = _cert_agent(tmp_path)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    crt = state / "device.crt"
    renewed = _x509_pem(NOW + 30 * 86400)
    seen: list[tuple[str, bool]] = []

    class Hub(FakeFetch):
        def get(self, url, *, etag=None, wait=None, params=None, kind="manifest"):
            seen.append((url, crt.exists()))  # what the transport would present
            if crt.exists() and crt.read_text() != renewed:
                raise FetchError(f"{url}: TLS handshake failed (certificate expired)")
            return super().get(url, etag=etag, wait=wait, params=params, kind=kind)

    crt.write_text(_x509_pem(NOW - 60))
    fetch = Hub({config.source_url: ORG.sign(three()), cert_url: _cert_body(renewed)})
    assert run(config, fetch, FakeBackend()).serial == 1
    seen = [s for s in seen if not s[0].endswith("/view")]  # no view endpoint: manifest
    assert seen[:2] == [(cert_url, False), (config.source_url, True)]
    assert crt.read_text() == renewed
    # a valid certificate is kept and not re-fetched on an unchanged pass
    seen.clear()
    run(config, fetch, FakeBackend())
    assert cert_url not in [u for u, _ in seen] and crt.read_text() == renewed


@pytest.mark.parametrize("config_stun,manifest_stun,want", [
    (None, ("198.51.100.20:3478", "198.51.100.21:3478"), ("198.51.100.20:3478", "198.51.100.21:3478")),
    (("203.0.113.9:3478",), ("198.51.100.20:3478",), ("203.0.113.9:3478",)),  # config wins
    ((), ("198.51.100.20:3478",), None),  # an explicit empty list turns STUN off
    (None, (), None),  # nowhere: no discovery, never a public default
])
def test_stun_servers_come_from_the_config_else_the_signed_manifest(
        tmp_path, config_stun, manifest_stun, want) -> None:
    from .helpers import write_agent

    config = write_agent(tmp_path, ORG, stun_servers=config_stun)
    fetch = FakeFetch({config.source_url: ORG.sign(three(stun_servers=manifest_stun))})
    asked = []

    def discover(port, servers):
        asked.append(tuple(servers))

    run(config, fetch, FakeBackend(), discover=discover)
    assert asked == ([want] if want else [])


def test_a_relay_with_more_peers_than_the_report_limit_sends_the_freshest() -> None:
    from reconciler.agent.endpoints import build_report
    from reconciler.model.endpoints import MAX_OBSERVATIONS
    from reconciler.model.wg import ObservedPeer

    n = MAX_OBSERVATIONS + 300
    peers = {f"K{i}": ObservedPeer(f"K{i}", (), endpoint=f"198.51.100.{i % 250 + 1}:{1000 + i}",
                                   last_handshake=NOW - i) for i in range(n)}
    names = {f"K{i}": f"p{i:05d}" for i in range(n)}
    relay = ORG.manifest([device("alpha", 1, "10.77.0.1", relay=True,
                                endpoint="203.0.113.1:51820")])
    body = build_report(relay, "alpha", ObservedInterface("mo", True, peers=peers),
                        names_by_key=names, listen_port=51820)
    got = body["observations"]
    assert len(got) == MAX_OBSERVATIONS
    assert {o["peer"] for o in got} == {f"p{i:05d}" for i in range(MAX_OBSERVATIONS)}
    assert [o["peer"] for o in got] == sorted(o["peer"] for o in got)


@pytest.mark.parametrize("garbage", [b"{garbage", b"", b"[" * 100_000, b'{"payload": 1}'])
def test_a_corrupt_cached_manifest_does_not_block_the_same_serial(agent, garbage) -> None:
    from pathlib import Path

    config, fetch, backend = agent
    run(config, fetch, backend)
    (Path(config.state_dir) / "manifest.dsse").write_bytes(garbage)
    again = run(config, fetch, backend)
    assert again.serial == 1 and again.source == "fetched"
    assert any("manifest.dsse" in w for w in again.warnings)
    # the fetched envelope is the cache again, and the next pass is quiet
    assert run(config, fetch, backend).warnings == ()


def test_a_corrupt_cache_still_refuses_an_older_serial(agent) -> None:
    from pathlib import Path

    config, fetch, backend = agent
    fetch.bodies[config.source_url] = ORG.sign(three(serial=5))
    run(config, fetch, backend)
    (Path(config.state_dir) / "manifest.dsse").write_bytes(b"{garbage")
    fetch.bodies[config.source_url] = ORG.sign(three(serial=4))
    with pytest.raises(ManifestRefused) as info:
        run(config, fetch, backend)
    assert info.value.reason == "rollback"


def test_a_manifest_from_the_future_is_refused_and_the_floor_stays(agent) -> None:
    config, fetch, backend = agent
    run(config, fetch, backend)  # serial 1 applied
    year = 365 * 86400
    fetch.bodies[config.source_url] = ORG.sign(three(serial=10**12, now=NOW + year))
    with pytest.raises(ManifestRefused) as info:
        run(config, fetch, backend)
    assert info.value.reason == "future" and "NTP" in str(info.value)
    assert StateDir(config.state_dir).last_serial() == 1
    # the correct next manifest is not a "rollback" afterwards
    fetch.bodies[config.source_url] = ORG.sign(three(serial=2))
    assert run(config, fetch, backend).serial == 2


@pytest.mark.parametrize("ahead,skew,accepted", [
    (200, 300.0, True), (299, 300.0, True), (301, 300.0, False), (1, 0.0, False),
    (3600, 7200.0, True), (-86400, 300.0, True),
])
def test_clock_skew_is_configurable(tmp_path, ahead, skew, accepted) -> None:
    from .helpers import write_agent

    config = write_agent(tmp_path, ORG, max_clock_skew=skew)
    fetch = FakeFetch({config.source_url: ORG.sign(three(now=NOW + ahead))})
    if accepted:
        assert run(config, fetch, FakeBackend()).serial == 1
    else:
        with pytest.raises(ManifestRefused, match="future"):
            run(config, fetch, FakeBackend())


@pytest.mark.parametrize("local,offered", [
    ("127.0.0.1", False), ("169.254.10.1", False), ("0.0.0.0", False), ("224.0.0.5", False),
    ("10.1.0.7", True), ("198.51.100.7", True),
])
def test_the_report_offers_only_candidates_a_peer_can_use(tmp_path, local, offered) -> None:
    config, fetch = _hub_agent(tmp_path)
    run(config, fetch, FakeBackend(), local_ip=lambda: local)
    sent = [c["address"] for c in fetch.posts[-1][1]["candidates"]]
    assert (f"{local}:51820" in sent) is offered


def test_a_rotated_key_waits_for_the_manifest_then_switches_in_one_pass(agent) -> None:
    from pathlib import Path

    from reconciler.converge import SetPrivateKey
    from reconciler.fsio import atomic_write

    config, fetch, backend = agent
    run(config, fetch, backend)
    new_private, new_public = wg_keypair(9)
    pending = Path(config.private_key + ".next")
    atomic_write(pending, (new_private + "\n").encode(), mode=0o600)
    # the hub has not committed the new key yet: the old key stays in use
    assert run(config, fetch, backend).applied == 0 and pending.exists()
    rotated = ORG.manifest([device("alpha", 9, "10.77.0.1"),
                            device("beta", 2, "10.77.0.2", endpoint="198.51.100.2:51820"),
                            device("gamma", 3, "10.77.0.3", routes=("192.168.50.0/24",))],
                           serial=2)
    fetch.bodies[config.source_url] = ORG.sign(rotated)
    result = run(config, fetch, backend)
    assert [type(op) for op in result.operations] == [SetPrivateKey]
    assert backend.state.public_key == new_public
    assert not pending.exists()
    assert Path(config.private_key).read_text().strip() == new_private
    assert oct(Path(config.private_key).stat().st_mode & 0o777) == "0o600"
    assert run(config, fetch, backend).applied == 0


def test_a_pass_hands_the_interpreter_over_quickly_and_restores_it(agent) -> None:
    """``quick_handoffs``: the host reads run in threads, and each needs the
    interpreter back after every system call; the pass shortens the switch
    interval while it runs (also when it fails) and puts the old one back."""
    import gc
    import sys

    from reconciler.agent.reconcile import HANDOFF

    config, fetch, backend = agent
    seen: list[tuple[float, bool]] = []
    observe = backend.observe

    def recording(name: str) -> ObservedInterface:
        seen.append((sys.getswitchinterval(), gc.isenabled()))
        return observe(name)

    backend.observe = recording  # type: ignore[method-assign]
    before = sys.getswitchinterval()
    run(config, fetch, backend)
    assert seen and all(s == (pytest.approx(HANDOFF), False) for s in seen)
    assert sys.getswitchinterval() == before and gc.isenabled()
    fetch.bodies[config.source_url] = FetchError("hub down")
    (StateDir(config.state_dir).path / "manifest.dsse").unlink()  # no cache to fall back on
    with pytest.raises(FetchError):
        run(config, fetch, backend)
    assert sys.getswitchinterval() == before and gc.isenabled()
