"""reconciler.config.semantic: checks that the corpus does not pin down alone."""

from __future__ import annotations

from reconciler.config import semantic
from reconciler.model.repo import Device, Mesh, Organization, OrgState, Source, User

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


# --- routes and endpoints (issue 11, item 7) -----------------------------------------


def routed(name, routes, *, exit_node=False, endpoint=None, relay=False, disabled=False, n=1):
    lines = {f"routes.{i}": 20 + i for i in range(len(routes))}
    lines.update({"routes": 19, "endpoint": 9})
    return Device(name=name, org="o", owner="u", wireguard_public_key=K[0],
                  identity_public_key=K[2], tunnel_ips=(f"10.0.0.{n}",), routes=tuple(routes),
                  exit_node=exit_node, endpoint=endpoint, relay=relay, disabled=disabled,
                  source=Source(f"orgs/o/devices/{name}.yaml", lines))


def file_codes(dev):
    return sorted((p.line, p.code) for p in semantic.check_device_file(dev, dev.name))


def test_broad_routes_are_refused_unless_the_device_is_an_exit_node():
    assert file_codes(routed("a", ["64.0.0.0/3"])) == [(20, "E-ROUTE-TOO-BROAD")]
    assert file_codes(routed("a", ["44.0.0.0/7"])) == [(20, "E-ROUTE-TOO-BROAD")]
    assert file_codes(routed("a", ["44.0.0.0/8"])) == []  # exactly /8 is allowed
    assert file_codes(routed("a", ["64.0.0.0/3"], exit_node=True)) == []
    assert file_codes(routed("a", ["0.0.0.0/1", "128.0.0.0/1"])) == [
        (20, "E-ROUTE-TOO-BROAD"), (21, "E-ROUTE-TOO-BROAD")]
    most = [f"{i:x}00::/8" for i in range(0x20, 0x80)]  # 2000::/3 + 4000::/2: not a /1
    assert file_codes(routed("a", most)) == []


def test_union_of_routes_covering_a_half_is_refused():
    routes = [f"{i:x}00::/8" for i in range(0x01, 0x80)] + ["::/8"]
    problems = sorted(semantic.check_device_file(routed("a", routes), "a"), key=lambda p: p.line)
    assert [(p.line, p.code) for p in problems] == [(19, "E-ROUTE-TOO-BROAD"),
                                                    (147, "E-ROUTE-RESERVED")]
    assert "::/1" in problems[0].message
    assert semantic.check_device_file(routed("a", routes[:-1], exit_node=True), "a") == []


def test_reserved_route_space_is_refused():
    for route in ("127.0.0.0/8", "127.0.0.1/32", "224.0.0.0/8", "239.255.0.0/16",
                  "169.254.1.0/24", "0.0.0.0/8", "0.0.0.0/32", "255.255.255.255/32", "::/128",
                  "::1/128", "fe80::/10", "ff02::/16", "::ffff:10.0.0.0/104", "169.0.0.0/8"):
        assert file_codes(routed("a", [route])) == [(20, "E-ROUTE-RESERVED")], route
    for route in ("192.168.0.0/16", "100.64.0.0/10", "2001:db8::/32", "fd00::/8"):
        assert file_codes(routed("a", [route])) == [], route


def test_endpoint_addresses_no_peer_can_reach():
    for endpoint in ("0.0.0.0:1", "0.1.2.3:1", "127.0.0.1:1", "127.255.0.9:1", "[::1]:1",
                     "[::]:1", "224.0.0.1:1", "[ff02::1]:1", "255.255.255.255:1",
                     "localhost:1", "a.localhost:1", "[::ffff:127.0.0.1]:1"):
        dev = routed("a", [], endpoint=endpoint, relay=True)
        assert file_codes(dev) == [(9, "E-ENDPOINT-ADDRESS")], endpoint
    for endpoint in ("203.0.113.1:51820", "relay.example.com:51820", "[2001:db8::1]:51820",
                     "192.168.1.1:51820"):
        assert file_codes(routed("a", [], endpoint=endpoint, relay=True)) == [], endpoint


def _repo(*devices, hub="https://hub.example.com", stun=(), orgs=()):
    mesh = Mesh(hub_url=hub, stun_servers=tuple(stun), source=Source("mesh.yaml"))
    states = {"o": state(*devices)}
    for name, cidr in orgs:
        org = Organization(name=name, cidr_v4=cidr, source=Source(
            f"orgs/{name}/organization.yaml", {"cidr_v4": 3}))
        states[name] = OrgState(organization=org, users={}, devices={})
    return mesh, states


def repo_codes(mesh, states):
    return sorted((p.file.rsplit("/", 2)[-2] + "/" + p.file.rsplit("/", 1)[-1], p.line, p.code)
                  for p in semantic.check_repo(mesh, states))


def test_routes_over_the_hub_are_loops_only_when_the_hub_is_an_ip():
    a = routed("a", ["198.51.100.0/24"])
    assert repo_codes(*_repo(a, hub="https://198.51.100.7:8443")) == [
        ("devices/a.yaml", 20, "E-ROUTE-LOOP")]
    assert repo_codes(*_repo(a, hub="http://198.51.100.7")) == [
        ("devices/a.yaml", 20, "E-ROUTE-LOOP")]
    # a host name is never resolved: the verdict must not depend on DNS at validate time
    assert repo_codes(*_repo(a, hub="https://hub.example.com")) == []
    assert repo_codes(*_repo(a, hub="https://198.51.101.7")) == []
    assert repo_codes(None, {"o": state(a)}) == []


def test_routes_over_stun_servers_and_endpoints_are_loops():
    a = routed("a", ["203.0.113.0/28", "192.0.2.0/24"])
    r = routed("r", [], endpoint="192.0.2.77:51820", relay=True, n=2)
    assert repo_codes(*_repo(a, r, stun=["203.0.113.9:3478"])) == [
        ("devices/a.yaml", 20, "E-ROUTE-LOOP"), ("devices/a.yaml", 21, "E-ROUTE-LOOP")]
    off = routed("r", [], endpoint="192.0.2.77:51820", relay=True, n=2, disabled=True)
    assert repo_codes(*_repo(a, off, stun=["stun.example.com:3478"])) == []


def test_routes_overlapping_any_org_network_and_overlapping_org_networks():
    a = routed("a", ["10.9.0.0/24"])
    assert repo_codes(*_repo(a, orgs=[("p", "10.9.0.0/16")])) == [
        ("devices/a.yaml", 20, "E-ROUTE-IN-ORG-CIDR")]
    assert repo_codes(*_repo(orgs=[("p", "10.0.0.0/8"), ("q", "10.200.0.0/16")])) == [
        ("p/organization.yaml", 3, "E-CIDR-OVERLAP"), ("q/organization.yaml", 3,
                                                          "E-CIDR-OVERLAP")]
    assert repo_codes(*_repo(orgs=[("p", "10.1.0.0/24"), ("q", "10.1.1.0/24")])) == []


def test_broad_routes_are_reported_once_and_exit_node_routes_still_checked_for_loops():
    broad = routed("a", ["192.0.0.0/2"])
    assert repo_codes(*_repo(broad, hub="https://198.51.100.7")) == []  # per-file only
    exit_node = routed("a", ["192.0.0.0/3"], exit_node=True)
    assert file_codes(exit_node) == []
    assert repo_codes(*_repo(exit_node, hub="https://198.51.100.7")) == [
        ("devices/a.yaml", 20, "E-ROUTE-LOOP")]
