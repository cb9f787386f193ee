"""Userspace backend without root: a fake UAPI socket and fake links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from converge.cases import key, peer

from backends.fakelinks import FakeLinks
from backends.fakeuapi import FakeUapi
from reconciler.backends import Backend, open_backend
from reconciler.backends.userspace import UserspaceBackend, check_ifname, is_wireguard_go_for
from reconciler.converge import AddAddress, AddPeer, SetForwarding, SetListenPort, SetMtu
from reconciler.errors import BackendError, BackendUnavailable, ConfigError
from reconciler.model.wg import ObservedInterface

DATA = Path(__file__).parent / "data"


@pytest.fixture
def backend(tmp_path: Path) -> UserspaceBackend:
    run = tmp_path / "run"
    run.mkdir()
    return UserspaceBackend(links=FakeLinks(), run_dir=str(run), state_dir=str(tmp_path / "state"))


def test_open_backend_builds_a_backend(tmp_path: Path) -> None:
    b = open_backend("userspace", links=FakeLinks(), run_dir=str(tmp_path))
    assert isinstance(b, Backend)
    with pytest.raises(ConfigError, match="links"):
        open_backend("userspace")
    with pytest.raises(ConfigError, match="unknown backend"):
        open_backend("bogus")


def test_absent_without_socket_or_pid(backend: UserspaceBackend) -> None:
    obs = backend.observe("wg-t")
    assert not obs.exists


def test_observe_merges_uapi_and_links(backend: UserspaceBackend) -> None:
    reply = (DATA / "get_reply.txt").read_text()
    fake = FakeUapi(backend.socket_path("wg-t"), lambda req: reply)
    try:
        obs = backend.observe("wg-t")
    finally:
        fake.close()
    assert obs.exists and obs.up and obs.mtu == 1420 and len(obs.peers) == 2
    assert obs.forwarding is None  # FakeLinks cannot tell


def test_forwarding_comes_from_links_and_goes_to_links(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    links = FakeLinks(ObservedInterface(name="wg-t", exists=True, up=True, mtu=1420, forwarding=True))
    backend = UserspaceBackend(links=links, run_dir=str(run), state_dir=str(tmp_path / "state"))
    reply = (DATA / "get_reply.txt").read_text()
    fake = FakeUapi(backend.socket_path("wg-t"), lambda req: reply if "get" in req else "errno=0\n\n")
    try:
        assert backend.observe("wg-t").forwarding is True
        backend.apply([SetForwarding("wg-t", True)])
    finally:
        fake.close()
    assert links.applied == [SetForwarding("wg-t", True)]
    assert not any("set=1" in r for r in fake.requests)  # nothing for wireguard-go


def test_all_peer_changes_go_in_one_transaction(backend: UserspaceBackend) -> None:
    fake = FakeUapi(backend.socket_path("wg-t"), lambda req: "errno=0\n\n")
    ops = [AddPeer("wg-t", peer(n)) for n in range(2, 200)]
    ops += [SetMtu("wg-t", 1420), AddAddress("wg-t", "10.0.0.1/24")]
    try:
        backend.apply(ops)
    finally:
        fake.close()
    assert len(fake.requests) == 1
    assert fake.requests[0].count("public_key=") == 198
    assert backend.links.applied == ops[-2:]


def test_refused_batch_is_retried_op_by_op(backend: UserspaceBackend) -> None:
    bad = key(66)

    def respond(req: str) -> str:
        return "errno=-22\n\n" if bytes([66]).hex() * 32 in req else "errno=0\n\n"

    fake = FakeUapi(backend.socket_path("wg-t"), respond)
    ops = [AddPeer("wg-t", peer(2)), AddPeer("wg-t", peer(66)), AddPeer("wg-t", peer(3))]
    ops.append(AddAddress("wg-t", "10.0.0.1/24"))
    try:
        with pytest.raises(BackendError, match=r"refused 1 operation") as info:
            backend.apply(ops)
    finally:
        fake.close()
    assert bad[:4] in str(info.value)
    assert len(fake.requests) == 1 + 3  # the batch, then one per peer op
    assert backend.links.applied == [ops[-1]]  # link state still converges


def test_busy_port_is_temporary_and_links_still_applied(backend: UserspaceBackend) -> None:
    fake = FakeUapi(
        backend.socket_path("wg-t"),
        lambda req: "errno=-98\n\n" if "listen_port" in req else "errno=0\n\n",
    )
    ops = [AddPeer("wg-t", peer(2)), SetListenPort("wg-t", 51820), SetMtu("wg-t", 1400)]
    try:
        with pytest.raises(BackendUnavailable, match="in use"):
            backend.apply(ops)
    finally:
        fake.close()
    assert fake.requests[0] == "set=1\nlisten_port=51820\n\n"
    assert "listen_port" not in fake.requests[1] and "public_key=" in fake.requests[1]
    assert backend.links.applied == [ops[-1]]


def test_pid_file_of_another_process_is_not_trusted(backend: UserspaceBackend) -> None:
    backend.state_dir.mkdir(parents=True)
    backend.pid_path("wg-t").write_text(f"{os.getpid()}\n")
    assert backend.owned_pid("wg-t") is None
    assert not is_wireguard_go_for(os.getpid(), "wg-t", None, "wireguard-go")
    backend.pid_path("wg-t").write_text("garbage\n")
    assert backend.owned_pid("wg-t") is None


@pytest.mark.parametrize("name", ["", "a" * 16, "wg/0", "wg 0", "wg:0"])
def test_interface_names_checked(name: str) -> None:
    with pytest.raises(ConfigError):
        check_ifname(name)


def test_missing_binary_is_backend_error(backend: UserspaceBackend) -> None:
    backend.wireguard_go = "/nonexistent/wireguard-go"
    with pytest.raises(BackendError, match="cannot start"):
        backend.ensure_daemon("wg-t")


def test_big_log_is_rotated_before_a_start(backend: UserspaceBackend) -> None:
    backend.state_dir.mkdir(parents=True)
    backend.log_path("wg-t").write_bytes(b"x" * (2 << 20))
    backend.wireguard_go = "/bin/false"
    with pytest.raises(BackendError, match="exited"):
        backend.ensure_daemon("wg-t")
    assert backend.log_path("wg-t").with_suffix(".log.1").stat().st_size == 2 << 20
    assert backend.log_path("wg-t").stat().st_size < 1 << 20
