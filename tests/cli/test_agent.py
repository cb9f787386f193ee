"""`meshops agent ...` end to end through main(), with a fake backend."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.structs import replace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agent.helpers import NOW, FakeBackend, Org, device, wg_keypair

ORG = Org()


@pytest.fixture
def enrolled(tmp_path, monkeypatch, capsys):
    """`agent init` for alpha, then a published manifest that lists its real key."""
    (tmp_path / "trust-in.json").write_bytes(ORG.trust)
    pub = tmp_path / "pub" / "acme"
    pub.mkdir(parents=True)
    config = tmp_path / "etc" / "agent.json"
    rc = main(["agent", "init", "--org", "acme", "--name", "alpha", "--manifest-url",
               f"file://{pub}/manifest.json", "--trust", str(tmp_path / "trust-in.json"),
               "--config", str(config), "--state-dir", str(tmp_path / "state")])
    out = capsys.readouterr().out
    assert rc == 0
    wg_pub = next(line.split()[-1] for line in out.splitlines()
                  if line.strip().startswith("public_key:"))
    backend = FakeBackend()
    monkeypatch.setattr("reconciler.agent.runtime.open_agent_backend", lambda cfg: backend)
    monkeypatch.setattr("time.time", lambda: NOW)

    def publish(serial: int, peers=("beta",), signer=ORG) -> None:
        alpha = device("alpha", 1, "10.77.0.1")
        alpha = replace(alpha, wireguard_public_key=wg_pub)
        others = [device(n, i + 2, f"10.77.0.{i + 2}") for i, n in enumerate(peers)]
        (pub / "manifest.json").write_bytes(signer.sign(ORG.manifest([alpha, *others],
                                                                     serial=serial)))

    return config, out, backend, publish


def test_init_writes_0600_keys_config_and_prints_public_yaml(enrolled, tmp_path) -> None:
    config, out, _, _ = enrolled
    doc = json.loads(config.read_text())
    assert doc["interface"] == "mo-acme" and doc["org"] == "acme"
    for key in ("private_key", "identity_key"):
        assert stat.S_IMODE(os.stat(doc[key]).st_mode) == 0o600
        assert Path(doc[key]).read_text().strip() not in out  # never printed
    assert "kind: Device" in out and "meshops device add alpha --org acme" in out
    assert Path(doc["trust"]).read_bytes() == ORG.trust
    assert main(["agent", "init", "--org", "acme", "--name", "alpha", "--manifest-url",
                 "file:///x", "--trust", str(tmp_path / "trust-in.json"),
                 "--config", str(config)]) == 2  # refuses to overwrite without --force


def test_apply_text_then_noop_json(enrolled, capsys) -> None:
    config, _, _backend, publish = enrolled
    publish(3)
    assert main(["agent", "apply", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("5 operation(s) applied (serial 3, commit ")
    assert main(["agent", "apply", "--config", str(config), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["operations"], doc["serial"], doc["commit"]) == (0, 3, "c0ffee" * 6 + "abcd")


def test_dry_run_prints_the_plan(enrolled, capsys) -> None:
    config, _, backend, publish = enrolled
    publish(3)
    assert main(["agent", "apply", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run, nothing changed" in out and "add peer" in out
    assert backend.applied == []


def test_exit_codes_refused_and_temporary(enrolled, capsys) -> None:
    config, _, backend, publish = enrolled
    assert main(["agent", "apply", "--config", str(config)]) == 75  # nothing published yet
    publish(3, signer=Org(key_seed=99))
    assert main(["agent", "apply", "--config", str(config)]) == 1
    assert "manifest refused (unknown-key)" in capsys.readouterr().err
    assert backend.applied == []
    assert main(["agent", "apply", "--config", "/nonexistent/agent.json"]) == 1


def test_status_json_and_table(enrolled, capsys) -> None:
    config, _, _backend, publish = enrolled
    publish(4, peers=("beta", "gamma"))
    main(["agent", "apply", "--config", str(config)])
    capsys.readouterr()
    assert main(["agent", "status", "--config", str(config), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["serial"] == 4 and [p["name"] for p in doc["peers"]] == ["beta", "gamma"]
    assert main(["agent", "status", "--config", str(config)]) == 0
    assert "beta" in capsys.readouterr().out


def test_render_wg_quick(enrolled, tmp_path, capsys) -> None:
    config, _, _, publish = enrolled
    publish(5)
    out = tmp_path / "alpha.conf"
    assert main(["agent", "render", "--config", str(config), "--out", str(out)]) == 0
    text = out.read_text()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert "[Interface]" in text and wg_keypair(2)[1] in text and "10.77.0.2/32" in text


def test_status_checks_the_forward_chain_only_for_relays(enrolled, capsys, monkeypatch) -> None:
    from reconciler.agent.config import load_config
    from reconciler.agent.state import APPLIED

    config, _, _backend, publish = enrolled
    publish(4, peers=("beta",))
    main(["agent", "apply", "--config", str(config)])
    capsys.readouterr()
    checked: list[str] = []

    def fake_warning(interface: str, netns: str | None = None) -> str:
        checked.append(interface)
        return f"FORWARD chain drops traffic on {interface}"

    monkeypatch.setattr("reconciler.net.firewall.forward_drop_warning", fake_warning)
    assert main(["agent", "status", "--config", str(config), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == [] and checked == []  # not a relay
    applied = Path(load_config(config).state_dir) / APPLIED
    summary = json.loads(applied.read_text())
    assert summary["relay"] is False
    applied.write_text(json.dumps({**summary, "relay": True}))
    assert main(["agent", "status", "--config", str(config), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["warnings"] == [f"FORWARD chain drops traffic on {checked[0]}"]


def test_apply_starts_a_due_key_rotation_after_its_pass(tmp_path, monkeypatch, capsys) -> None:
    """``key_rotation_days``: `agent init --key-rotation-days` writes it (a static
    manifest refuses it), and `agent apply` starts the rotation after a good pass,
    never on --dry-run. The pass and the hub are fakes here; tests/agent/
    test_autorotate_hub.py runs it against a real hub."""
    from agent.test_rotate import FakeFetch

    from reconciler.agent.commit import Result
    from reconciler.agent.rotate import next_key_path

    (tmp_path / "trust-in.json").write_bytes(ORG.trust)
    config = tmp_path / "etc" / "agent.json"
    base = ["agent", "init", "--org", "acme", "--name", "alpha", "--trust",
            str(tmp_path / "trust-in.json"), "--config", str(config), "--state-dir",
            str(tmp_path / "state"), "--key-rotation-days", "30"]
    assert main([*base, "--manifest-url", "file:///m.json"]) == 1
    assert "key_rotation_days: needs a hub" in capsys.readouterr().err
    assert main([*base, "--hub", "https://hub.example:8443"]) == 0
    doc = json.loads(config.read_text())
    assert doc["key_rotation_days"] == 30
    os.utime(doc["private_key"], (NOW - 31 * 86400, NOW - 31 * 86400))
    fetch = FakeFetch()
    monkeypatch.setattr("reconciler.agent.runtime.open_agent_backend", lambda cfg: FakeBackend())
    monkeypatch.setattr("reconciler.agent.runtime.make_host", lambda cfg: (None, FakeBackend()))
    monkeypatch.setattr("reconciler.agent.runtime.make_fetcher", lambda cfg: fetch)
    monkeypatch.setattr("reconciler.agent.reconcile.reconcile_once",
                        lambda *a, **kw: Result((), 0, 3, "c0ffee" * 6 + "abcd"))
    monkeypatch.setattr("time.time", lambda: NOW)
    capsys.readouterr()
    assert main(["agent", "apply", "--config", str(config), "--dry-run"]) == 0
    assert fetch.posts == [] and not os.path.exists(next_key_path(doc["private_key"]))
    assert main(["agent", "apply", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    pending = Path(next_key_path(doc["private_key"])).read_text().strip()
    assert len(fetch.posts) == 1 and "meshops: key rotation started (the key is 31.0 days" in err
    assert fetch.closed  # the hub connection is closed once the rotation request is sent
    assert pending not in err
    assert main(["agent", "apply", "--config", str(config)]) == 0  # pending: nothing new
    assert len(fetch.posts) == 1 and "key rotation" not in capsys.readouterr().err
