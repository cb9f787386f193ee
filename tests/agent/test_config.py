"""Agent config, atomic writes, key generation and the state dir."""

from __future__ import annotations

import json
import os
import stat

import pytest

from reconciler.agent.config import (
    atomic_write,
    config_from_dict,
    default_interface,
    load_config,
    read_private_key,
    save_config,
)
from reconciler.agent.keys import generate_keys, public_keys
from reconciler.agent.state import CachedManifest, StateDir
from reconciler.errors import ConfigError, UsageError

BASE = {"org": "acme", "name": "laptop", "trust": "/t.json", "private_key": "/k",
        "identity_key": "/i", "manifest_url": "file:///m.json"}


def test_default_interface_is_cut_to_15_characters() -> None:
    assert default_interface("acme") == "mo-acme"
    assert default_interface("averyveryverylongorg") == "mo-averyveryver"
    assert config_from_dict(BASE).interface == "mo-acme"


@pytest.mark.parametrize("change,match", [
    ({"hub": "https://h"}, "exactly one"),
    ({"manifest_url": "ftp://x"}, "must start with"),
    ({"backend": "magic"}, "backend"),
    ({"interface": "x" * 16}, "interface name"),
    ({"listen_port": 70000}, "out of range"),
    ({"colour": "blue"}, "unknown field"),
])
def test_bad_configs_are_refused(change, match) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict({**BASE, **change})


def test_save_and_load_roundtrip(tmp_path) -> None:
    cfg = config_from_dict({**BASE, "stun_servers": ["198.51.100.1:3478"]})
    save_config(cfg, tmp_path / "agent.json")
    assert load_config(tmp_path / "agent.json") == cfg


def test_missing_config_says_what_to_do(tmp_path) -> None:
    with pytest.raises(ConfigError, match="meshops agent init"):
        load_config(tmp_path / "nope.json")


def test_atomic_write_mode_and_no_leftovers(tmp_path) -> None:
    atomic_write(tmp_path / "secret", b"s", mode=0o600)
    atomic_write(tmp_path / "secret", b"t", mode=0o600)
    assert (tmp_path / "secret").read_bytes() == b"t"
    assert stat.S_IMODE(os.stat(tmp_path / "secret").st_mode) == 0o600
    assert os.listdir(tmp_path) == ["secret"]


def test_generate_keys_0600_and_refuse_overwrite(tmp_path) -> None:
    wg, ident = str(tmp_path / "wg.key"), str(tmp_path / "id.key")
    keys = generate_keys(wg, ident)
    for path in (wg, ident):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert public_keys(wg, ident) == keys
    assert len(read_private_key(wg)) == 44
    with pytest.raises(UsageError, match="refusing"):
        generate_keys(wg, ident)
    assert generate_keys(wg, ident, force=True) != keys


def test_private_key_readable_by_others_is_refused(tmp_path) -> None:
    wg = tmp_path / "wg.key"
    generate_keys(str(wg), str(tmp_path / "id.key"))
    os.chmod(wg, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_private_key(str(wg))


def test_state_dir_roundtrip_and_corrupt_floor(tmp_path) -> None:
    state = StateDir(tmp_path / "s")
    assert state.load_manifest() is None and state.last_serial() == 0
    state.save_manifest(CachedManifest(b"env", 9, "abc", 100, '"9"'))
    assert state.load_manifest() == CachedManifest(b"env", 9, "abc", 100, '"9"')
    assert state.last_serial() == 9
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700
    (tmp_path / "s" / "manifest.meta.json").write_text("{garbage")
    with pytest.raises(ConfigError, match="rollback floor"):
        state.last_serial()


def test_save_applied_skips_identical_writes(tmp_path) -> None:
    state = StateDir(tmp_path)
    state.save_applied({"serial": 1})
    before = os.stat(tmp_path / "applied.json").st_mtime_ns
    state.save_applied({"serial": 1})
    assert os.stat(tmp_path / "applied.json").st_mtime_ns == before
    assert json.loads((tmp_path / "applied.json").read_text()) == {"serial": 1}
