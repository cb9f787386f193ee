"""Agent config (typed loading: every field, its type and range), atomic writes, keys."""

from __future__ import annotations

import json
import os
import stat

import pytest

from reconciler.agent.config import (
    config_from_dict,
    default_interface,
    load_config,
    read_private_key,
    save_config,
)
from reconciler.agent.keys import generate_keys, public_keys
from reconciler.errors import ConfigError, UsageError
from reconciler.fsio import atomic_write

BASE = {"org": "acme", "name": "laptop", "trust": "/t.json", "private_key": "/k",
        "identity_key": "/i", "manifest_url": "file:///m.json"}


def test_default_interface_is_cut_to_15_characters() -> None:
    assert default_interface("acme") == "mo-acme"
    assert default_interface("averyveryverylongorg") == "mo-averyveryver"
    assert config_from_dict(BASE).interface == "mo-acme"


@pytest.mark.parametrize("change,field,match", [
    ({"hub": "https://h"}, "hub, manifest_url", "exactly one"),
    ({"manifest_url": None}, "hub, manifest_url", "exactly one"),
    ({"manifest_url": "ftp://x"}, "manifest_url", "must start with"),
    ({"manifest_url": "file://remote/m.json"}, "manifest_url", "not a local file URL"),
    ({"manifest_url": 7}, "manifest_url", "not a URL"),
    ({"manifest_url": None, "hub": "https://:443"}, "hub", "not a valid URL"),
    ({"manifest_url": None, "hub": "https://h:99999"}, "hub", "not a valid URL"),
    ({"manifest_url": None, "hub": "https://h/ x"}, "hub", "not a valid URL"),
    ({"backend": "magic"}, "backend", "not a backend"),
    ({"backend": ["kernel"]}, "backend", "not a backend"),
    ({"interface": "x" * 16}, "interface", "not a valid Linux interface name"),
    ({"interface": "a/b"}, "interface", "not a valid Linux interface name"),
    ({"interface": "a:b"}, "interface", "not a valid Linux interface name"),
    ({"interface": ".."}, "interface", "not a valid Linux interface name"),
    ({"interface": 5}, "interface", "not an interface name"),
    ({"listen_port": 70000}, "listen_port", "not a UDP port .use 1-65535"),
    ({"listen_port": 0}, "listen_port", "not a UDP port"),
    ({"listen_port": "51820"}, "listen_port", "without quotes"),
    ({"listen_port": 51820.0}, "listen_port", "not a UDP port"),
    ({"listen_port": True}, "listen_port", "the boolean true is not a UDP port"),
    ({"interval": "30"}, "interval",
     'the string "30" is not a number of seconds .write 30 without quotes'),
    ({"interval": 0}, "interval", "out of range"),
    ({"interval": -5}, "interval", "out of range"),
    ({"interval": float("nan")}, "interval", "not a number of seconds"),
    ({"interval": float("inf")}, "interval", "not a number of seconds"),
    ({"interval": 10**400}, "interval", "not a number of seconds"),
    ({"interval": None}, "interval", "null is not a number"),
    ({"interval": False}, "interval", "boolean"),
    ({"timeout": 3600}, "timeout", "out of range"),
    ({"timeout": "soon"}, "timeout", "use a number > 0"),
    ({"max_backoff": 0.5}, "max_backoff", "out of range"),
    ({"jitter": 1}, "jitter", "not a fraction"),
    ({"jitter": "0.1"}, "jitter", "not a fraction"),
    ({"long_poll": 55.5}, "long_poll", "whole number"),
    ({"long_poll": 301}, "long_poll", "whole number"),
    ({"long_poll": "55"}, "long_poll", "whole number"),
    ({"discover": "yes"}, "discover", "not true or false"),
    ({"stun_servers": "198.51.100.1:3478"}, "stun_servers", "not a list"),
    ({"stun_servers": [3478]}, "stun_servers\\[0\\]", "not a STUN server"),
    ({"stun_servers": ["h:0"]}, "stun_servers\\[0\\]", "not a STUN server"),
    ({"stun_servers": ["h:port"]}, "stun_servers\\[0\\]", "not a STUN server"),
    ({"stun_servers": ["a b:1"]}, "stun_servers\\[0\\]", "not a STUN server"),
    ({"stun_servers": ["h"] * 17}, "stun_servers", "more than 16"),
    ({"backend_options": [1]}, "backend_options", "a list is not an object"),
    ({"backend_options": "x"}, "backend_options", "not an object"),
    ({"backend_options": {"colour": 1}}, "backend_options", "not an option of the userspace"),
    ({"backend_options": {"wireguard_go": 1}}, "backend_options.wireguard_go", "not a string"),
    ({"backend_options": {"wireguard_go": ""}}, "backend_options.wireguard_go", "not a string"),
    ({"backend_options": {"start_timeout": "5"}}, "backend_options.start_timeout", "seconds"),
    ({"backend": "kernel", "backend_options": {"run_dir": "/r"}}, "backend_options",
     "not an option of the kernel backend .known: none"),
    ({"hysteresis": [1]}, "hysteresis", "not an object"),
    ({"hysteresis": {"stale_afer": 1}}, "hysteresis", "not a timer"),
    ({"hysteresis": {"stale_after": "180"}}, "hysteresis.stale_after", "not a number"),
    ({"hysteresis": {"stale_after": -1}}, "hysteresis.stale_after", "not a number"),
    ({"org": "Acme"}, "org", "not a DNS label"),
    ({"org": 5}, "org", "not a DNS label"),
    ({"name": "-x"}, "name", "not a DNS label"),
    ({"name": None}, "name", "missing"),
    ({"trust": "trust.json"}, "trust", "not an absolute path"),
    ({"trust": ["/t"]}, "trust", "not a file path"),
    ({"private_key": ""}, "private_key", "not a file path"),
    ({"state_dir": None}, "state_dir", "not a file path"),
    ({"tls_ca": 1}, "tls_ca", "not a file path"),
    ({"netns": "a/b"}, "netns", "not a network namespace name"),
    ({"netns": 3}, "netns", "not a network namespace name"),
    ({"colour": "blue"}, "'colour'", "unknown field"),
])
def test_bad_configs_are_refused_naming_the_field(change, field, match) -> None:
    with pytest.raises(ConfigError, match=f"^agent.json: {field}: .*{match}") as err:
        config_from_dict({**BASE, **change}, where="agent.json")
    assert "Traceback" not in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, "interval": "30", "listen_port": "51820",
                          "backend_options": [1]}, where="/etc/meshops/agent.json")
    lines = str(err.value).splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "listen_port", "interval", "backend_options"]
    assert all(line.startswith("/etc/meshops/agent.json: ") for line in lines)


@pytest.mark.parametrize("change", [
    {"interval": 30, "timeout": 5, "max_backoff": 60, "jitter": 0},
    {"listen_port": 1, "stun_servers": ["198.51.100.1", "[2001:db8::1]:3478", "stun.example:19302"]},
    {"backend": "kernel", "backend_options": {}},
    {"backend_options": {"wireguard_go": "/usr/bin/wireguard-go", "start_timeout": 5}},
    {"hysteresis": {"stale_after": 9, "retry_initial": 1.5}},
    {"manifest_url": None, "hub": "https://203.0.113.7:8443/base"},
    {"manifest_url": "https://198.51.100.9/acme/manifest.json"},
    {"interface": "wg0", "netns": "lab-a", "tls_ca": "/etc/ca.pem"},
])
def test_good_configs_load(change) -> None:
    config = config_from_dict({**BASE, **change})
    assert isinstance(config.interval, float) and isinstance(config.timeout, float)
    assert all(isinstance(v, float) for v in config.hysteresis.values())


def test_the_hysteresis_timers_are_the_peering_ones() -> None:
    from reconciler.agent.config import HYSTERESIS_FIELDS
    from reconciler.agent.peering import HysteresisConfig
    from reconciler.structs import field_names

    assert set(HYSTERESIS_FIELDS) == set(field_names(HysteresisConfig))


def test_the_backend_options_are_the_constructor_ones() -> None:
    import inspect

    from reconciler.agent.config import BACKEND_OPTIONS
    from reconciler.backends.userspace import UserspaceBackend

    params = inspect.signature(UserspaceBackend.__init__).parameters
    for name in BACKEND_OPTIONS["userspace"]:
        assert name in params


@pytest.mark.parametrize("content,match", [
    (b"{garbage", "not JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "nested 200000 levels deep"),
    (b'{"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}', "nested 9 levels"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"interval": NaN}', "not acceptable JSON"),
    (b"[1, 2]", "must be a JSON object, not a list"),
    (b'"text"', "must be a JSON object"),
    (b'{"interval": 1' + b"0" * 5000 + b"}", "not acceptable JSON"),
    (b" " * (1024 * 1024 + 1), "over the limit"),
])
def test_a_hostile_config_file_is_a_clear_error(tmp_path, content, match) -> None:
    path = tmp_path / "agent.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_a_directory_or_a_device_as_the_config(tmp_path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config("/dev/zero")


def test_wrong_types_in_the_file_name_the_file_and_field(tmp_path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({**BASE, "interval": "30"}))
    with pytest.raises(ConfigError, match=f"^{path}: interval: .*without quotes"):
        load_config(path)


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
