"""``POST /v1/orgs/{org}/devices/{name}/rotate`` end to end: a real git
repository pushed to a real bare remote, requests signed with real Ed25519
identity keys, every refusal, replays, and a GPG-signed hub commit."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from reconciler.config import load
from reconciler.hub.api import make_app
from reconciler.hub.enroll import Enrollment
from reconciler.hub.feedstore import FeedStore
from reconciler.hub.serve import Hub
from reconciler.identity import request as enroll_request
from reconciler.identity.request import canonical
from reconciler.identity.rotation import PAYLOAD_TYPE, make_body
from reconciler.pki.envelope import OrgTrust, open_envelope, sign_envelope
from reconciler.pki.keys import keyid

from .conftest_serve import FakePipeline, make_org, run

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"
# devices whose identity keys the tests hold (the example repo's are not here)
HELD = ("acme/web-1", "acme/db-1", "acme/old-kiosk", "acme/build-1", "acme/relay-1",
        "globex/gw-1")


def git(*args: str, cwd: Path | str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {}))).stdout.strip()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def wg_public() -> str:
    return b64(X25519PrivateKey.generate().public_key().public_bytes_raw())


class World:
    """The example repository with identity keys the test holds, committed to a
    bare remote, and the hub's own bare mirror of it."""

    def __init__(self, tmp: Path) -> None:
        self.src = src = tmp / "src"
        shutil.copytree(EXAMPLE, src)
        self.keys: dict[str, Ed25519PrivateKey] = {}
        for ident in HELD:
            org, name = ident.split("/")
            key = self.keys[ident] = Ed25519PrivateKey.generate()
            path = src / f"orgs/{org}/devices/{name}.yaml"
            text = path.read_text()
            old = re.search(r"identity:\n  public_key: (\S+)", text)
            assert old is not None, path
            path.write_text(text.replace(old.group(1), b64(key.public_key().public_bytes_raw())))
        build = src / "orgs/acme/devices/build-1.yaml"
        build.write_text(build.read_text() + "expires: 2020-01-31\n")
        # a hand-written file: comments, a quoted key, a flow list, no trailing newline
        self.web1_text = web1 = (src / "orgs/acme/devices/web-1.yaml").read_text()
        key_line = re.search(r"(?m)^  public_key: (\S+)$", web1)
        assert key_line is not None
        self.web1_key = key_line.group(1)
        git("init", "-q", "-b", "main", cwd=src)
        git("add", "-A", cwd=src)
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=src)
        result = load(src)
        assert result.repo is not None, result.problems
        self.repo = result.repo
        self.remote = tmp / "remote.git"
        git("clone", "-q", "--bare", str(src), str(self.remote), cwd=tmp)
        self.mirror = tmp / "mirror.git"
        git("clone", "-q", "--bare", str(self.remote), str(self.mirror), cwd=tmp)
        self.base = git("rev-parse", "main", cwd=self.mirror)
        self.served = self.base
        self.clock = [time.time()]

    def service(self, **kw: object) -> Enrollment:
        opts: dict[str, object] = {"repo_path": str(self.mirror), "push_url": str(self.remote),
                                       "branch": "main", "served_commit": lambda: self.served,
                                       "now": lambda: self.clock[0]}
        opts.update(kw)
        return Enrollment(**opts)  # type: ignore[arg-type]

    def signed(self, org: str, name: str, new_key: str | None = None, *,
               ts: float | None = None, key: Ed25519PrivateKey | None = None,
               ptype: str = PAYLOAD_TYPE, **changes: object) -> bytes:
        """The envelope ``meshops agent rotate-key`` sends (signed by ``key``,
        default the device's own identity key)."""
        body = make_body(org=org, device=name, new_wireguard_public_key=new_key or wg_public(),
                         issued_at=int(self.clock[0] if ts is None else ts))
        body.update(changes)
        return sign_envelope(canonical(body), ptype, key or self.keys[f"{org}/{name}"])

    def remote_main(self) -> str:
        return git("rev-parse", "main", cwd=self.remote)


def post_all(service: Enrollment, tmp: Path, requests: list[tuple[str, bytes]],
             between=None) -> list[tuple[int, dict]]:
    """POST each (path, body) to an in-process hub; ``between(i)`` runs after
    answer ``i``."""
    async def go() -> list[tuple[int, dict]]:
        hub = Hub(pipeline=FakePipeline([make_org("acme", "10.20.0.0/16")]),
                  store=FeedStore(f"sqlite:///{tmp}/hub.db"))
        await hub.start()
        client = TestClient(TestServer(make_app(hub, enroll=service)))
        await client.start_server()
        out = []
        try:
            for i, (path, body) in enumerate(requests):
                resp = await client.post(path, data=body)
                out.append((resp.status, await resp.json()))
                if between is not None:
                    between(i)
        finally:
            await client.close()
            await hub.close()
        return out
    return run(go())


def url(org: str, name: str) -> str:
    return f"/v1/orgs/{org}/devices/{name}/rotate"


def test_a_rotation_is_one_commit_changing_one_line(tmp_path):
    world = World(tmp_path)
    new = wg_public()
    [(status, doc)] = post_all(world.service(), tmp_path,
                               [(url("acme", "web-1"), world.signed("acme", "web-1", new))])
    assert status == 201, doc
    assert doc["status"] == "committed" and doc["branch"] == "main"
    head = world.remote_main()
    assert doc["commit"] == head
    assert git("rev-list", "--count", f"{world.base}..{head}", cwd=world.remote) == "1"
    assert git("rev-parse", f"{head}^", cwd=world.remote) == world.base
    rel = "orgs/acme/devices/web-1.yaml"
    assert git("diff", "--numstat", world.base, head, cwd=world.remote) == f"1\t1\t{rel}"
    after = git("show", f"{head}:{rel}", cwd=world.remote) + "\n"
    assert after == world.web1_text.replace(world.web1_key, new)  # every other byte kept
    assert git("log", "-1", "--format=%an <%ae>|%cn <%ce>", head, cwd=world.remote) == \
        "meshops hub <hub@meshops.invalid>|meshops hub <hub@meshops.invalid>"
    trailers = git("log", "-1", "--format=%(trailers:key=Meshops-Rotate-Device,valueonly)",
                   head, cwd=world.remote)
    assert trailers == "web-1"
    # the signed request rides along: a commit gate can check the device's own signature
    request = git("log", "-1", "--format=%(trailers:key=Meshops-Rotate-Request,valueonly)",
                  head, cwd=world.remote)
    device_key = world.keys["acme/web-1"].public_key()
    opened = open_envelope(base64.b64decode(request), OrgTrust(keys={keyid(device_key):
                                                                    device_key}), PAYLOAD_TYPE)
    assert json.loads(opened.payload)["new_wireguard_public_key"] == new
    # the new commit validates and the device differs only in its key
    result = load(str(world.remote), head)
    assert result.repo is not None, result.problems
    old_dev = world.repo.orgs["acme"].devices["web-1"]
    new_dev = result.repo.orgs["acme"].devices["web-1"]
    assert new_dev.wireguard_public_key == new
    assert (new_dev.tunnel_ips, new_dev.identity_public_key, new_dev.tags) == \
        (old_dev.tunnel_ips, old_dev.identity_public_key, old_dev.tags)
    # the hub's worktree is gone
    assert git("worktree", "list", "--porcelain", cwd=world.mirror).count("worktree ") == 1


def test_only_the_key_line_changes_in_a_hand_written_file(tmp_path):
    """Comments, a quoted key, a flow list, CRLF line ends: the edit touches the
    key and nothing else."""
    world = World(tmp_path)
    # rewrite relay-1 by hand and commit it as the served commit
    rel = "orgs/acme/devices/relay-1.yaml"
    dev = world.repo.orgs["acme"].devices["relay-1"]
    path = world.src / rel
    lines = path.read_text().splitlines()
    lines = [f'  public_key: "{dev.wireguard_public_key}"   # rotated by hand, 2025'
             if line.startswith("  public_key: ") and dev.wireguard_public_key in line else line
             for line in lines]
    text = "# relay for acme\r\n" + "\r\n".join(lines) + "\r\n# the end"
    path.write_bytes(text.encode())
    git("add", "-A", cwd=world.src)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "hand", cwd=world.src)
    git("push", "-q", str(world.remote), "main", cwd=world.src)
    git("fetch", "-q", str(world.remote), "main:main", cwd=world.mirror)
    world.base = world.served = world.remote_main()
    new = wg_public()
    [(status, doc)] = post_all(world.service(), tmp_path,
                               [(url("acme", "relay-1"), world.signed("acme", "relay-1", new))])
    assert status == 201, doc
    out = subprocess.run(["git", "show", f"{doc['commit']}:{rel}"], cwd=world.remote,
                         capture_output=True, check=True).stdout
    assert out == text.replace(dev.wireguard_public_key, new).encode()
    assert f'"{new}"   # rotated by hand, 2025' in out.decode()


def refusal_cases(world: World) -> list[tuple[str, str, bytes, int, str]]:
    """(what, path, body, status, reason)."""
    now = world.clock[0]
    repo = world.repo
    db1_wg = repo.orgs["acme"].devices["db-1"].wireguard_public_key
    web1_wg = repo.orgs["acme"].devices["web-1"].wireguard_public_key
    zero = b64(bytes(32))
    low_order = b64(bytes.fromhex(
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"))
    s = world.signed
    enroll_type = enroll_request.PAYLOAD_TYPE
    return [
        ("unknown device", url("acme", "nope"),
         s("acme", "nope", key=world.keys["acme/web-1"]), 404, "unknown-device"),
        ("another org's device, under this org", url("acme", "gw-1"),
         s("acme", "gw-1", key=world.keys["globex/gw-1"]), 404, "unknown-device"),
        ("another org's device, payload names the other org", url("globex", "gw-1"),
         s("acme", "gw-1", key=world.keys["globex/gw-1"]), 400, "bad-request"),
        ("payload names another device", url("acme", "web-1"),
         s("acme", "db-1"), 400, "bad-request"),
        ("disabled device", url("acme", "old-kiosk"), s("acme", "old-kiosk"), 403,
         "device-disabled"),
        ("expired device", url("acme", "build-1"), s("acme", "build-1"), 403,
         "device-expired"),
        ("signed by a stranger", url("acme", "web-1"),
         s("acme", "web-1", key=Ed25519PrivateKey.generate()), 401, "bad-request-signature"),
        ("signed by another device's identity key", url("acme", "web-1"),
         s("acme", "web-1", key=world.keys["acme/db-1"]), 401, "bad-request-signature"),
        ("signed by another org's device", url("acme", "web-1"),
         s("acme", "web-1", key=world.keys["globex/gw-1"]), 401, "bad-request-signature"),
        ("stale", url("acme", "web-1"), s("acme", "web-1", ts=now - 301), 401,
         "stale-request"),
        ("from the future", url("acme", "web-1"), s("acme", "web-1", ts=now + 301), 401,
         "stale-request"),
        ("same key", url("acme", "web-1"), s("acme", "web-1", web1_wg), 409, "same-key"),
        ("key of another device", url("acme", "web-1"), s("acme", "web-1", db1_wg), 409,
         "key-in-use"),
        ("not base64", url("acme", "web-1"), s("acme", "web-1", "not a key!"), 400, "bad-key"),
        ("31 bytes", url("acme", "web-1"), s("acme", "web-1", b64(bytes(range(1, 32)))), 400,
         "bad-key"),
        ("all-zero point", url("acme", "web-1"), s("acme", "web-1", zero), 400, "bad-key"),
        ("low-order point", url("acme", "web-1"), s("acme", "web-1", low_order), 400,
         "bad-key"),
        ("enrollment payload type", url("acme", "web-1"),
         s("acme", "web-1", ptype=enroll_type), 400, "bad-request"),
        ("extra field", url("acme", "web-1"), s("acme", "web-1", wireguard_private_key="x"),
         400, "bad-request"),
        ("issued_at a string", url("acme", "web-1"), s("acme", "web-1", issued_at=str(now)),
         400, "bad-request"),
        ("not JSON", url("acme", "web-1"), b"{", 400, "bad-request"),
        ("too large", url("acme", "web-1"), b" " * 9000, 413, "too-large"),
    ]


def test_every_refusal_has_its_reason_and_pushes_nothing(tmp_path):
    world = World(tmp_path)
    cases = refusal_cases(world)
    answers = post_all(world.service(), tmp_path, [(p, b) for _, p, b, _, _ in cases])
    for (what, _, _, status, reason), (got, doc) in zip(cases, answers, strict=True):
        assert (got, doc.get("error")) == (status, reason), (what, doc)
        assert doc["message"], what
    assert world.remote_main() == world.base
    assert git("branch", "--list", cwd=world.remote) == "* main"


def test_a_replayed_request_is_refused(tmp_path):
    world = World(tmp_path)
    first_key, second_key = wg_public(), wg_public()
    to_first = world.signed("acme", "web-1", first_key)

    def between(i: int) -> None:
        if i in (1, 3):  # the hub now serves the rotation it committed
            git("fetch", "-q", str(world.remote), "main:main", cwd=world.mirror)
            world.served = world.remote_main()
        if i == 4:
            world.clock[0] += 301

    answers = post_all(world.service(), tmp_path, [
        (url("acme", "web-1"), to_first),  # 0: committed
        (url("acme", "web-1"), to_first),  # 1: replayed at once: refused
        (url("acme", "web-1"), to_first),  # 2: replayed once served: same key
        (url("acme", "web-1"), world.signed("acme", "web-1", second_key, ts=world.clock[0] + 1)),
        (url("acme", "web-1"), to_first),  # 4: replayed after a second rotation (roll back)
        (url("acme", "web-1"), to_first),  # 5: and later than 5 minutes
    ], between=between)
    assert [a[0] for a in answers] == [201, 401, 409, 201, 401, 401], answers
    assert [a[1].get("error") for a in answers] == [
        None, "request-used", "same-key", None, "request-used", "stale-request"]
    head = world.remote_main()
    assert head == answers[3][1]["commit"]
    text = git("show", f"{head}:orgs/acme/devices/web-1.yaml", cwd=world.remote)
    assert second_key in text and first_key not in text


def test_a_moved_branch_is_not_overwritten(tmp_path):
    world = World(tmp_path)
    (world.src / "README.md").write_text("someone else's commit\n")
    git("add", "-A", cwd=world.src)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "other", cwd=world.src)
    git("push", "-q", str(world.remote), "main", cwd=world.src)
    moved = world.remote_main()
    [(status, doc)] = post_all(world.service(), tmp_path,
                               [(url("acme", "web-1"), world.signed("acme", "web-1"))])
    assert (status, doc["error"]) == (409, "branch-moved"), doc
    assert world.remote_main() == moved


def test_a_checked_out_branch_is_refused_clearly(tmp_path):
    world = World(tmp_path)
    [(status, doc)] = post_all(world.service(push_url=str(world.src)), tmp_path,
                               [(url("acme", "web-1"), world.signed("acme", "web-1"))])
    assert (status, doc["error"]) == (503, "cannot-push"), doc
    assert git("rev-parse", "main", cwd=world.src) == world.base


def test_a_hub_that_serves_nothing_yet_refuses(tmp_path):
    world = World(tmp_path)
    world.served = None  # type: ignore[assignment]
    [(status, doc)] = post_all(world.service(), tmp_path,
                               [(url("acme", "web-1"), world.signed("acme", "web-1"))])
    assert (status, doc["error"]) == (503, "not-ready"), doc


def gpg_key(home: Path) -> str:
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                    "--quick-gen-key", "meshops hub <hub@meshops.invalid>", "ed25519", "sign",
                    "never"], check=True, capture_output=True, timeout=60)
    out = subprocess.run(["gpg", "--homedir", str(home), "--with-colons", "--list-keys"],
                         check=True, capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


@pytest.mark.skipif(not shutil.which("gpg"), reason="needs gpg (Debian package gnupg)")
def test_the_commit_is_signed_by_the_hub_key(tmp_path):
    world = World(tmp_path)
    home = tmp_path / "gnupg"
    fpr = gpg_key(home)
    service = world.service(commit_key=fpr, gnupghome=str(home))
    [(status, doc)] = post_all(service, tmp_path,
                               [(url("acme", "db-1"), world.signed("acme", "db-1"))])
    assert status == 201, doc
    verify = subprocess.run(["git", "verify-commit", "--raw", doc["commit"]], cwd=world.remote,
                            env=dict(os.environ, GNUPGHOME=str(home)), capture_output=True,
                            text=True, check=False)
    assert verify.returncode == 0 and f"VALIDSIG {fpr}" in verify.stderr, verify.stderr
    # the served commit is not signed: verify-commit is not vacuous
    unsigned = subprocess.run(["git", "verify-commit", world.base], cwd=world.remote,
                              env=dict(os.environ, GNUPGHOME=str(home)), capture_output=True,
                              check=False)
    assert unsigned.returncode != 0


def test_the_envelope_is_json_the_agent_can_send(tmp_path):
    """The agent re-serialises the envelope (``post_json``): key order and spacing
    do not matter, the signature covers the payload bytes."""
    world = World(tmp_path)
    env = json.loads(world.signed("acme", "web-1"))
    body = json.dumps(env, indent=3).encode()
    [(status, doc)] = post_all(world.service(), tmp_path, [(url("acme", "web-1"), body)])
    assert status == 201, doc


def test_only_the_devices_signature_goes_into_the_trailer(tmp_path):
    """Extra envelope fields and a stranger's signature are not copied into git."""
    world = World(tmp_path)
    env = json.loads(world.signed("acme", "web-1"))
    stranger = json.loads(world.signed("acme", "web-1", key=Ed25519PrivateKey.generate()))
    good = env["signatures"][0]
    env["signatures"] = [{"keyid": good["keyid"], "sig": b64(bytes(64))},
                         stranger["signatures"][0], good]
    env["junk"] = "x" * 1000
    [(status, doc)] = post_all(world.service(), tmp_path,
                               [(url("acme", "web-1"), json.dumps(env).encode())])
    assert status == 201, doc
    request = git("log", "-1", "--format=%(trailers:key=Meshops-Rotate-Request,valueonly)",
                  doc["commit"], cwd=world.remote)
    assert json.loads(base64.b64decode(request)) == {
        "payload": env["payload"], "payloadType": PAYLOAD_TYPE, "signatures": [good]}
