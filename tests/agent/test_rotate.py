"""``meshops agent rotate-key``: the request the agent builds and signs, the
pending key file, and the CLI against a real hub (aiohttp on loopback) that
commits to a real bare git remote."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import stat
import threading
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hub.test_rotate import World, git

from reconciler.agent.config import AgentConfig, save_config
from reconciler.agent.rotate import next_key_path, prepare_next_key, rotate_key
from reconciler.cli import main
from reconciler.converge.keys import public_key
from reconciler.errors import ConfigError, FetchError, UsageError
from reconciler.hub.api import make_app
from reconciler.hub.feedstore import FeedStore
from reconciler.hub.serve import Hub
from reconciler.identity.rotation import FIELDS, PAYLOAD_TYPE
from reconciler.pki.envelope import OrgTrust, open_envelope
from reconciler.pki.keys import keyid


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def device_files(tmp: Path, identity: Ed25519PrivateKey | None = None) -> tuple[str, str]:
    """A current WireGuard key and an identity key on disk, both 0600."""
    wg, ident = tmp / "wireguard.key", tmp / "identity.key"
    wg.write_text(b64(X25519PrivateKey.generate().private_bytes_raw()) + "\n")
    ident.write_bytes((identity or Ed25519PrivateKey.generate()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    for path in (wg, ident):
        path.chmod(0o600)
    return str(wg), str(ident)


def agent_config(tmp: Path, hub: str | None, name: str = "web-1",
                 identity: Ed25519PrivateKey | None = None) -> AgentConfig:
    wg, ident = device_files(tmp, identity)
    return AgentConfig(org="acme", name=name, hub=hub,
                       manifest_url=None if hub else "file:///nonexistent/manifest.json",
                       trust=str(tmp / "trust.json"), private_key=wg, identity_key=ident,
                       backend="userspace", interface="", state_dir=str(tmp / "state")
                       ).validate()


class FakeFetch:
    """Records what ``post_json`` was given; answers or raises as told."""

    def __init__(self, answer: object = None, error: Exception | None = None) -> None:
        self.posts: list[tuple[str, object]] = []
        self.answer = answer if answer is not None else {"status": "committed",
                                                         "commit": "a" * 40, "branch": "main"}
        self.error = error
        self.closed = False

    def post_json(self, url: str, obj: object) -> object:
        self.posts.append((url, obj))
        if self.error is not None:
            raise self.error
        return self.answer

    def close(self) -> None:
        self.closed = True


def test_the_request_is_signed_by_the_identity_key_and_names_the_device(tmp_path):
    identity = Ed25519PrivateKey.generate()
    config = agent_config(tmp_path, "https://hub.example:8443/", identity=identity)
    fetch = FakeFetch()
    result = rotate_key(config, fetch=fetch, now=lambda: 1_700_000_000.7)
    [(url, obj)] = fetch.posts
    assert url == "https://hub.example:8443/v1/orgs/acme/devices/web-1/rotate"
    pub = identity.public_key()
    opened = open_envelope(json.dumps(obj).encode(), OrgTrust(keys={keyid(pub): pub}),
                           PAYLOAD_TYPE)
    body = json.loads(opened.payload)
    assert sorted(body) == sorted(FIELDS)
    assert body == {"org": "acme", "device": "web-1", "issued_at": 1_700_000_000,
                    "new_wireguard_public_key": result.new_public_key}
    # the new key is on disk, mode 0600, next to the current one, and is what was sent
    path = Path(result.next_key_path)
    assert path == Path(config.private_key + ".next") == Path(next_key_path(config.private_key))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private = path.read_text().strip()
    assert public_key(private) == result.new_public_key
    assert private not in json.dumps(obj)  # only the public half leaves the device
    assert result.commit == "a" * 40


def test_a_stranger_cannot_have_signed_it(tmp_path):
    config = agent_config(tmp_path, "https://hub.example")
    fetch = FakeFetch()
    rotate_key(config, fetch=fetch, now=lambda: 1.0)
    other = Ed25519PrivateKey.generate().public_key()
    from reconciler.errors import ManifestRefused

    with pytest.raises(ManifestRefused):
        open_envelope(json.dumps(fetch.posts[0][1]).encode(),
                      OrgTrust(keys={keyid(other): other}), PAYLOAD_TYPE)


def test_a_pending_key_is_never_overwritten_without_force(tmp_path):
    config = agent_config(tmp_path, "https://hub.example")
    path, first = prepare_next_key(config.private_key)
    before = Path(path).read_bytes()
    for _ in range(2):
        with pytest.raises(UsageError) as info:
            prepare_next_key(config.private_key)
        assert "--force" in str(info.value) and first in str(info.value)
        assert Path(path).read_bytes() == before
    # --resend sends the same key, --force makes another one
    assert prepare_next_key(config.private_key, resend=True) == (path, first)
    _, forced = prepare_next_key(config.private_key, force=True)
    assert forced != first and public_key(Path(path).read_text().strip()) == forced
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(UsageError):  # nothing pending to resend
        prepare_next_key(str(tmp_path / "other.key"), resend=True)


def test_a_corrupt_pending_key_is_named(tmp_path):
    config = agent_config(tmp_path, "https://hub.example")
    Path(next_key_path(config.private_key)).write_text("garbage\n")
    with pytest.raises(ConfigError, match=r"wireguard.key.next: not a readable"):
        prepare_next_key(config.private_key, resend=True)


def test_what_happens_to_the_pending_key_after_each_answer(tmp_path):
    config = agent_config(tmp_path, "https://hub.example")
    path = next_key_path(config.private_key)
    # a refusal of a key made by this call: deleted (git cannot carry it)
    with pytest.raises(ConfigError):
        rotate_key(config, fetch=FakeFetch(error=ConfigError("HTTP 403: device-disabled")),
                   now=lambda: 1.0)
    assert not os.path.exists(path)
    # the hub unreachable: kept, and the message says how to send it again
    with pytest.raises(FetchError, match="--resend"):
        rotate_key(config, fetch=FakeFetch(error=FetchError("connection refused")),
                   now=lambda: 1.0)
    kept = Path(path).read_bytes()
    # a refusal of a resent key: kept (an earlier attempt may be in git)
    with pytest.raises(ConfigError, match="stays pending"):
        rotate_key(config, fetch=FakeFetch(error=ConfigError("HTTP 409: same-key")),
                   now=lambda: 1.0, resend=True)
    assert Path(path).read_bytes() == kept
    # an answer that is not a committed rotation: kept
    with pytest.raises(FetchError):
        rotate_key(config, fetch=FakeFetch(answer={"status": "weird"}), now=lambda: 1.0,
                   resend=True)
    assert Path(path).read_bytes() == kept
    # the current key is never touched
    assert Path(config.private_key).stat().st_size > 0


def test_a_static_manifest_has_no_hub_to_ask(tmp_path):
    config = agent_config(tmp_path, None)
    with pytest.raises(UsageError, match="needs a hub"):
        rotate_key(config, fetch=FakeFetch(), now=lambda: 1.0)
    assert not os.path.exists(next_key_path(config.private_key))


class HubThread:
    """The hub's HTTP API with the enrollment (and so rotation) service, on
    127.0.0.1 in its own loop."""

    def __init__(self, world: World, tmp: Path) -> None:
        self.world, self.tmp = world, tmp
        self.ready: queue.Queue[int] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.loop.run_forever()
        self.loop.run_until_complete(self._stop())
        self.loop.close()

    async def _start(self) -> None:
        from hub.conftest_serve import FakePipeline, make_org

        self.hub = Hub(pipeline=FakePipeline([make_org("acme", "10.20.0.0/16")]),
                       store=FeedStore(f"sqlite:///{self.tmp}/hub.db"))
        await self.hub.start()
        self.server = TestServer(make_app(self.hub, enroll=self.world.service()),
                                 host="127.0.0.1")
        await self.server.start_server()
        self.ready.put(self.server.port)

    async def _stop(self) -> None:
        await self.server.close()
        await self.hub.close()

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.ready.get(timeout=30)}"

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def test_the_cli_rotates_a_key_through_a_real_hub(tmp_path, capsys):
    world = World(tmp_path / "git")
    dev = tmp_path / "device"
    dev.mkdir()
    with HubThread(world, tmp_path) as hub_url:
        config = agent_config(dev, hub_url, identity=world.keys["acme/web-1"])
        config_path = dev / "agent.json"
        save_config(config, config_path)
        current = Path(config.private_key).read_bytes()
        assert main(["agent", "rotate-key", "--config", str(config_path)]) == 0
        out = capsys.readouterr()
        path = Path(next_key_path(config.private_key))
        private = path.read_text().strip()
        new = public_key(private)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert private not in out.out + out.err  # the private key is never printed
        head = git("rev-parse", "main", cwd=world.remote)
        assert f"public key {new}" in out.out and head[:12] in out.out
        assert "keeps its current key until the manifest carries" in out.out
        text = git("show", f"{head}:orgs/acme/devices/web-1.yaml", cwd=world.remote)
        assert f"public_key: {new}" in text
        assert Path(config.private_key).read_bytes() == current  # the switch is the pass's

        # a second run refuses the pending key (usage error, exit 2), file untouched
        assert main(["agent", "rotate-key", "--config", str(config_path)]) == 2
        assert "rotation is pending" in capsys.readouterr().err
        assert path.read_text().strip() == private
        # --resend once the hub serves the rotation: the hub says same-key, the key stays
        world.served = head
        git("fetch", "-q", str(world.remote), "main:main", cwd=world.mirror)
        assert main(["agent", "rotate-key", "--resend", "--config", str(config_path)]) == 1
        err = capsys.readouterr().err
        assert "same-key" in err and "stays pending" in err and private not in err
        assert path.read_text().strip() == private

        # a disabled device: the hub refuses, the freshly made key is removed again
        kiosk = tmp_path / "kiosk"
        kiosk.mkdir()
        kiosk_config = agent_config(kiosk, hub_url, name="old-kiosk",
                                    identity=world.keys["acme/old-kiosk"])
        save_config(kiosk_config, kiosk / "agent.json")
        assert main(["agent", "rotate-key", "--config", str(kiosk / "agent.json")]) == 1
        assert "device-disabled" in capsys.readouterr().err
        assert not os.path.exists(next_key_path(kiosk_config.private_key))
    assert git("rev-parse", "main", cwd=world.remote) == head  # one rotation, one commit
