"""The hub's own addresses: ``--listen``/``--stun`` parsing and ``--tls-name``
literals through ``Endpoint``, and a real ``hub serve`` (mTLS on loopback)
refusing a candidate that names the hub itself."""

from __future__ import annotations

import json
import time
from ipaddress import ip_address
from pathlib import Path

import pytest

from reconciler.errors import ConfigError
from reconciler.hub.daemon import ServeConfig, own_addresses, parse_hostport, start
from reconciler.hub.tls import ip_literal, server_names

from .conftest_serve import FakePipeline, make_org, run, write_pem_files
from .test_serve_tls import client_ctx, fetch, init_repo, wait_for


@pytest.mark.parametrize("text,default,expected", [
    ("0.0.0.0:8443", 1, ("0.0.0.0", 8443)),
    ("127.0.0.1:0", 1, ("127.0.0.1", 0)),  # any free port
    ("[::]:8443", 1, ("::", 8443)),
    ("[2001:DB8::1]:443", 1, ("2001:db8::1", 443)),
    ("::", 8443, ("::", 8443)),
    ("2001:db8::1", 3478, ("2001:db8::1", 3478)),
    ("[::1]", 8443, ("::1", 8443)),
    (":8443", 1, ("0.0.0.0", 8443)),
    ("hub.example.org:443", 1, ("hub.example.org", 443)),
    ("hub.example.org", 8443, ("hub.example.org", 8443)),
    ("198.51.100.10", 3478, ("198.51.100.10", 3478)),
])
def test_listen_addresses_parse_through_endpoint(text: str, default: int,
                                                 expected: tuple[str, int]) -> None:
    assert parse_hostport(text, default) == expected


@pytest.mark.parametrize("text,why", [
    ("198.51.100.10:65536", "1 to 65535"),
    ("198.51.100.10:http", "1 to 65535"),
    ("[fe80::1%eth0]:8443", "zone ids"),
    ("[198.51.100.10]:8443", "IPv6 addresses only"),
    ("bad_name:8443", "not an IP address"),
])
def test_bad_listen_addresses_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        parse_hostport(text, 8443)
    assert text in str(info.value)


@pytest.mark.parametrize("name,ip", [
    ("198.51.100.10", "198.51.100.10"), ("2001:db8::10", "2001:db8::10"),
    ("[2001:db8::10]", "2001:db8::10"), ("hub.example.org", None), ("localhost", None),
    ("fe80::1%eth0", None),
])
def test_tls_names_that_are_addresses(name: str, ip: str | None) -> None:
    assert ip_literal(name) == (ip_address(ip) if ip else None)


def test_server_names_leave_addresses_out() -> None:
    assert server_names("acme", ["hub.example.org", "198.51.100.10", "[2001:db8::1]"]) == [
        "acme.hub", "hub.example.org", "acme.hub.example.org"]


def test_own_addresses_come_from_listen_stun_and_tls_names() -> None:
    config = ServeConfig(repo=".", listen="198.51.100.10:8443", stun="[2001:db8::10]:3478",
                         tls_names=("hub.example.org", "203.0.113.10", "[2001:db8::11]"))
    assert own_addresses(config) == {ip_address(a) for a in (
        "198.51.100.10", "2001:db8::10", "203.0.113.10", "2001:db8::11")}
    # wildcards are no address of anyone's
    assert own_addresses(ServeConfig(repo=".", listen="0.0.0.0:8443", stun="[::]:3478")) == \
        frozenset()


def test_a_running_hub_refuses_a_candidate_naming_itself(tmp_path: Path) -> None:
    now = time.time()
    acme = make_org("acme", "10.20.0.0/16")
    laptop = acme.add_device("laptop", now)
    files = write_pem_files(tmp_path, laptop)
    repo = init_repo(tmp_path / "repo")

    async def go() -> None:
        running = await start(ServeConfig(
            repo=str(repo), listen="127.0.0.1:0", db=f"sqlite:///{tmp_path}/hub.db",
            state_dir=str(tmp_path / "state"), pipeline=FakePipeline([acme]),
            tls_names=("198.51.100.10",)))
        try:
            await wait_for(lambda: running.hub.snapshot is not None)
            ctx = client_ctx(acme.keys.ca_pem, files)
            for address, reason in (("198.51.100.10:51820", "hub-address"),
                                    ("127.0.0.1:22", "loopback"),
                                    ("169.254.169.254:80", "link-local")):
                status, body = await fetch(running.port, "/v1/orgs/acme/endpoints", ctx,
                                           "acme.hub", "POST", {
                                               "device": "laptop", "candidates": [
                                                   {"kind": "stun", "address": address}]})
                doc = json.loads(body)
                assert (status, doc["error"], doc["reason"], doc["candidate"]) == \
                    (400, "bad-candidate", reason, address)
            status, body = await fetch(running.port, "/v1/orgs/acme/endpoints", ctx, "acme.hub",
                                       "POST", {"device": "laptop", "candidates": [
                                           {"kind": "stun", "address": "198.51.100.11:51820"}]})
            assert status == 200 and json.loads(body)["changed"] is True
        finally:
            await running.stop()

    run(go())
