"""reconciler.config.semantic: checks that the corpus does not pin down alone."""

from __future__ import annotations

from reconciler.config import semantic
from reconciler.model.repo import Device, Organization, OrgState, Source, User

K = ["H68knQ+MlukXL0Qf5sS2i/l+Y7yweVjgpR1m1TjdFGc=", "1atPde0dNFo0JLUnvO4Yqx7C9U2icSt/grOcEFrj0w0=",
     "vWmRMN3LDJ2EMRWzLHtwvfFq369F9Hnn+Xr3ubXN8ws=", "t0Yb74V7NWq0u3itPzHJzdiN9EcK7AAUI0CrgfKkqDQ="]


def device(name, ips, routes=(), disabled=False, wg=0, ident=2, owner="u"):
    return Device(name=name, org="o", owner=owner, wireguard_public_key=K[wg],
                  identity_public_key=K[ident], tunnel_ips=tuple(ips), routes=tuple(routes),
                  disabled=disabled,
                  source=Source(f"orgs/o/devices/{name}.yaml", {"routes.0": 12, "routes.1": 13}))


def state(*devices, v6=None):
    org = Organization(name="o", cidr_v4="10.0.0.0/24", cidr_v6=v6, owners=("u",),
                       source=Source("orgs/o/organization.yaml"))
    user = User(name="u", org="o", email="u@x", oidc_issuer="https://i", oidc_subject="1",
                role="owner")
    return OrgState(organization=org, users={"u": user}, devices={d.name: d for d in devices})


def codes(problems):
    return sorted((p.file.rsplit("/", 1)[-1], p.line, p.code) for p in problems)


def test_decode_key_accepts_only_32_bytes_of_strict_base64():
    assert semantic.decode_key(K[0]) is not None
    assert semantic.decode_key(K[0][:-2] + "==") is None
    assert semantic.decode_key("not base64!") is None
    assert semantic.decode_key("é" * 44) is None


def test_clean_org_has_no_problems():
    s = state(device("a", ["10.0.0.1"], wg=0, ident=2), device("b", ["10.0.0.2"], wg=1, ident=3))
    assert semantic.check_org(s) == []


def test_overlapping_routes_on_one_device_are_reported():
    s = state(device("a", ["10.0.0.1"], routes=["192.168.0.0/16", "192.168.4.0/24"]))
    assert codes(semantic.check_org(s)) == [("a.yaml", 13, "E-ROUTE-OVERLAP")]


def test_disabled_devices_keep_their_address_but_not_their_routes():
    a = device("a", ["10.0.0.1"], routes=["192.168.0.0/24"], wg=0, ident=2)
    b = device("b", ["10.0.0.1"], routes=["192.168.0.0/24"], disabled=True, wg=1, ident=3)
    assert codes(semantic.check_org(state(a, b))) == [("b.yaml", 1, "E-DUP-IP")]


def test_v6_is_required_only_when_the_org_has_a_v6_cidr():
    a = device("a", ["10.0.0.1"])
    assert semantic.check_org(state(a)) == []
    assert codes(semantic.check_org(state(a, v6="fd00::/64"))) == [
        ("a.yaml", 1, "E-IP-V6-MISSING")]


def test_broken_files_are_not_reported_as_dangling():
    a = device("a", ["10.0.0.1"], owner="ghost")
    assert codes(semantic.check_org(state(a))) == [("a.yaml", 1, "E-REF-OWNER")]
    assert semantic.check_org(state(a), frozenset({"users/ghost"})) == []


def test_address_memo_is_filled_and_reused():
    memo: dict[str, tuple[int, int]] = {}
    s = state(device("a", ["10.0.0.1"]))
    semantic.check_org(s, memo=memo)
    assert memo == {"10.0.0.1": (4, 0x0A000001)}
    memo["10.0.0.1"] = (4, 0x0B000001)  # a poisoned memo proves it is consulted
    assert codes(semantic.check_org(s, memo=memo)) == [("a.yaml", 1, "E-IP-OUTSIDE-CIDR")]


def test_endpoint_syntax():
    assert semantic._endpoint_ok("203.0.113.5:51820")
    assert semantic._endpoint_ok("[2001:db8::1]:51820")
    assert semantic._endpoint_ok("relay.example.com:443")
    assert not semantic._endpoint_ok("[2001:db8::zz]:51820")
    assert not semantic._endpoint_ok("host:0")
    assert not semantic._endpoint_ok("host")


def test_address_edges_of_the_org_networks():
    last_v6 = "fd00::ffff:ffff:ffff:ffff"
    a = device("a", ["10.0.0.254", last_v6], wg=0, ident=2)
    assert semantic.check_org(state(a, v6="fd00::/64")) == []
    for v4, code in (("10.0.0.255", "E-IP-RESERVED"), ("10.0.0.0", "E-IP-RESERVED"),
                     ("10.0.1.0", "E-IP-OUTSIDE-CIDR"), ("fd00::1", "E-IP-V6-NO-CIDR")):
        got = [p.code for p in semantic.check_org(state(device("a", [v4])))]
        assert code in got, (v4, got)
    outside = device("a", ["10.0.0.1", "fd00:0:0:1::"])
    assert [p.code for p in semantic.check_org(state(outside, v6="fd00::/64"))] == [
        "E-IP-OUTSIDE-CIDR"]
