"""``key_rotation_days`` against a real ``hub serve`` (``hub.daemon.start``: TLS,
the real publish pipeline with the example org's SOPS keys, following a bare
git remote): an agent whose WireGuard key is older than the setting starts the
rotation by itself after a pass, the hub commits and publishes the new public
key, and the agent's next pass switches to it. The interface is the in-memory
``FakeBackend``: everything else (mTLS, the signed manifest, git) is real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hub.test_rotate import EXAMPLE, World, git

from reconciler.agent.autorotate import RECORD, read_facts
from reconciler.agent.keyage import DAY
from reconciler.agent.loop import AgentLoop
from reconciler.agent.rotate import next_key_path
from reconciler.agent.runtime import make_fetcher, make_public_fetcher
from reconciler.cli import main
from reconciler.converge.keys import public_key
from reconciler.structs import replace

from .helpers import FakeBackend
from .test_enroll import DaemonThread
from .test_rotate import agent_config

pytestmark = pytest.mark.slow


class NoJitter:
    def uniform(self, a: float, b: float) -> float:
        return 0.0


@pytest.fixture
def gnupg(tmp_path: Path):
    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed (scripts/test installs it)")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import",
                    str(EXAMPLE / "keys" / "example-hub.sec.asc")], check=True,
                   capture_output=True)
    yield str(home)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False,
                   capture_output=True)


def test_an_old_key_is_rotated_by_the_agent_itself(tmp_path, gnupg, capsys):
    from reconciler.hub.daemon import ServeConfig

    world = World(tmp_path / "git")
    dev = tmp_path / "device"
    dev.mkdir()
    config = agent_config(dev, "https://127.0.0.1:1", identity=world.keys["acme/web-1"])
    old_public = public_key(Path(config.private_key).read_text().strip())
    # git carries this device's current key (one commit on the remote, as a PR would)
    work = tmp_path / "work"
    git("clone", "-q", str(world.remote), str(work), cwd=tmp_path)
    device_file = work / "orgs/acme/devices/web-1.yaml"
    device_file.write_text(device_file.read_text().replace(world.web1_key, old_public))
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "web-1's key",
        cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    # the pinned trust: what `hub publish` writes for this repository
    assert main(["hub", "publish", str(work), "--rev", "main", "--out", str(tmp_path / "pub"),
                 "--state", str(tmp_path / "pub.db"), "--gnupghome", gnupg]) == 0
    capsys.readouterr()
    shutil.copy(tmp_path / "pub" / "trust.json", config.trust)

    serve = ServeConfig(repo=f"file://{world.remote}", branch="main", listen="127.0.0.1:0",
                        poll=0.3, db=f"sqlite:///{tmp_path}/hub.db",
                        state_dir=str(tmp_path / "hub-state"), gnupghome=gnupg)
    with DaemonThread(serve) as port:
        config = replace(config, hub=f"https://127.0.0.1:{port}", key_rotation_days=30,
                         interval=1.0, long_poll=1).validate()
        made = time.time() - 40 * DAY  # the key was made 40 days ago (no record: the mtime)
        os.utime(config.private_key, (made, made))
        said = []
        loop = AgentLoop(config, fetch=make_fetcher(config), backend=FakeBackend(),
                         clock=time.time, sleep=time.sleep, rng=NoJitter(),
                         public_fetch=make_public_fetcher(config), on_rotation=said.append,
                         on_error=lambda exc: pytest.fail(f"the pass failed: {exc}"))
        before = git("rev-parse", "main", cwd=world.remote)
        loop.step()  # converges on the old key, then starts the rotation
        assert [r.due.action for r in said] == ["start"] and said[0].error is None, said
        new_public = said[0].new_public_key
        pending = Path(next_key_path(config.private_key)).read_text().strip()
        assert public_key(pending) == new_public
        # the hub's one-line commit on the followed branch
        head = git("rev-parse", "main", cwd=world.remote)
        assert head != before and said[0].commit == head
        text = git("show", f"{head}:orgs/acme/devices/web-1.yaml", cwd=world.remote)
        assert re.search(rf"(?m)^  public_key: {re.escape(new_public)}$", text)
        assert git("log", "-1", "--format=%an", head, cwd=world.remote) == "meshops hub"

        # the next passes: the hub follows its own commit and publishes it; the agent
        # switches in one pass and starts nothing else
        deadline = time.monotonic() + 60
        while Path(config.private_key).read_text().strip() != pending:
            assert time.monotonic() < deadline, "the agent never switched to the new key"
            loop.step()
            time.sleep(0.2)
        assert not os.path.exists(next_key_path(config.private_key))
        assert loop.backend.state.public_key == new_public  # the interface runs the new key
        loop.step()
        assert [r.due.action for r in said if r.due.action != "none"] == ["start"]
        facts = read_facts(config)
        assert facts.current == new_public
        assert abs(facts.created[new_public] - time.time()) < 120  # dated by the record
        assert pending not in config.state_path(RECORD).read_text()
    assert git("rev-parse", "main", cwd=world.remote) == head  # one rotation, one commit
