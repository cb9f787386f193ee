"""agent status rows from the applied summary + the observed interface."""

from __future__ import annotations

from reconciler.agent.status import build_status, format_age, format_table
from reconciler.model.wg import ObservedInterface, ObservedPeer

APPLIED = {
    "interface": "mo-acme", "serial": 7, "commit": "abcdef0123456789",
    "peers": [
        {"name": "beta", "public_key": "B=", "tunnel_ips": ["10.77.0.2"], "path": "direct",
         "via": None, "endpoint": "198.51.100.2:51820"},
        {"name": "gamma", "public_key": "G=", "tunnel_ips": ["10.77.0.3"], "path": "relay",
         "via": "relay-1", "endpoint": None},
        {"name": "relay-1", "public_key": "R=", "tunnel_ips": ["10.77.0.4"], "path": "direct",
         "via": None, "endpoint": "203.0.113.4:51820"},
    ],
}


def test_rows_use_the_relay_counters_for_relayed_peers() -> None:
    observed = ObservedInterface("mo-acme", True, peers={
        "B=": ObservedPeer("B=", ("10.77.0.2/32",), "198.51.100.2:51820", 25, 990.0, 10, 20),
        "R=": ObservedPeer("R=", ("10.77.0.0/24",), "203.0.113.4:51820", 25, 900.0, 5, 6),
    })
    st = build_status(APPLIED, observed, now=1000.0)
    rows = {p.name: p for p in st.peers}
    assert (st.serial, st.commit) == (7, "abcdef0123456789")
    assert rows["beta"].handshake_age == 10.0 and rows["beta"].rx_bytes == 10
    assert rows["gamma"].path == "relay via relay-1"
    assert rows["gamma"].handshake_age == 100.0 and rows["gamma"].tx_bytes == 6
    table = format_table(st)
    assert "relay via relay-1" in table and "serial 7" in table and "abcdef012345" in table
    assert st.as_dict()["peers"][0]["name"] == "beta"


def test_never_configured_and_absent_interface() -> None:
    st = build_status(APPLIED, ObservedInterface("mo-acme", False), now=1000.0)
    assert not st.exists and all(not p.configured for p in st.peers)
    assert format_age(None) == "never" and format_age(30) == "30s" and format_age(600) == "10m"
    assert build_status(None, ObservedInterface("x", False), 0).peers == ()
