"""agent status carries host warnings (a relay's FORWARD-chain check) to table and JSON."""

from __future__ import annotations

from reconciler.agent.status import build_status, format_table
from reconciler.model.wg import ObservedInterface


def test_warnings_are_shown_in_table_and_json() -> None:
    warning = "the iptables FORWARD policy drops traffic"
    st = build_status({"interface": "mo-acme", "peers": []},
                      ObservedInterface("mo-acme", True), now=0.0, warnings=[warning])
    assert st.warnings == (warning,)
    assert f"warning: {warning}" in format_table(st).splitlines()[1]
    assert st.as_dict()["warnings"] == [warning]
    assert build_status(None, ObservedInterface("x", False), 0).as_dict()["warnings"] == []
