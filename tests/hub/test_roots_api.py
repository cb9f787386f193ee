"""``GET /v1/orgs/{org}/roots/{N}`` against snapshots the real publisher built from
the example repository (real gpg and SOPS), before and during a rotation; and
the feed, signed by the same keys as the manifest."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from reconciler.hub.api import make_app
from reconciler.hub.carotate import rotate_org_keys
from reconciler.hub.feedstore import FeedStore
from reconciler.hub.serve import Hub
from reconciler.hub.snapshot import PublisherPipeline, Snapshot
from reconciler.pki.envelope import parse_envelope
from reconciler.pki.keys import keyid
from reconciler.pki.root import verify_initial, verify_next


class WorkTree:
    """``PublisherPipeline`` over a working tree (the commit name is only a label)."""

    def __init__(self, repo: Path, state: str, home: str) -> None:
        self.inner = PublisherPipeline(str(repo), state, home)

    def build(self, rev: str, now: float) -> Snapshot:
        return self.inner.build(None, now)  # type: ignore[arg-type]

    def close(self) -> None:
        self.inner.close()


def test_roots_are_served_publicly_up_to_the_newest(example_repo, example_gnupghome, tmp_path):
    now = time.time()
    clock = [now]
    state = f"sqlite:///{tmp_path}/hub.db"

    async def go() -> None:
        pipeline = WorkTree(example_repo, state, example_gnupghome)
        hub = Hub(pipeline=pipeline, store=FeedStore(state), now=lambda: clock[0])
        await hub.start()
        assert await hub.publish("c1")
        # roots need no client certificate; the feed does (injected by a header here)
        app = make_app(hub, peer_cert=lambda r: base64.b64decode(r.headers["X-Cert"]).decode()
                       if "X-Cert" in r.headers else None)
        async with TestClient(TestServer(app)) as c:
            one = await c.get("/v1/orgs/acme/roots/1")
            assert one.status == 200 and one.content_type == "application/json"
            body = await one.read()
            assert body == (example_repo / "orgs/acme/roots/1.json").read_bytes()
            root1 = verify_initial(body, "acme")
            for path, status, code in [
                ("/v1/orgs/acme/roots/2", 404, "no-root"),
                ("/v1/orgs/globex/roots/1", 404, "no-root"),  # legacy org: no roots
                ("/v1/orgs/nope/roots/1", 404, "unknown-org"),
                ("/v1/orgs/acme/roots/0", 400, "bad-parameter"),
                ("/v1/orgs/acme/roots/01", 400, "bad-parameter"),
                ("/v1/orgs/acme/roots/-1", 400, "bad-parameter"),
                ("/v1/orgs/acme/roots/" + "9" * 40, 400, "bad-parameter"),
                ("/v1/orgs/acme/roots/%C2%B2", 400, "bad-parameter"),
            ]:
                resp = await c.get(path)
                assert resp.status == status, path
                assert (await resp.json())["error"] == code, path

            assert hub.snapshot is not None and hub.snapshot.next_change_at is None
            rot = rotate_org_keys(example_repo, "acme", now=now + 60, signing=True, ca=False,
                                  gpg_home=example_gnupghome)
            clock[0] = now + 70
            assert await hub.publish("c2")
            assert hub.snapshot.next_change_at == rot.overlap_until
            two = await c.get("/v1/orgs/acme/roots/2")
            assert two.status == 200
            root2 = verify_next(root1, await two.read())
            assert len(root2.roles["manifest"].keyids) == 2
            three = await c.get("/v1/orgs/acme/roots/3")  # due at overlap_until
            assert three.status == 404 and (await three.json())["error"] == "no-root"

            snap = hub.org("acme")
            assert snap is not None and snap.root_version == 2
            manifest_kids = {k for k, _ in parse_envelope(snap.manifest).signatures}
            assert manifest_kids == set(root2.roles["manifest"].keyids)
            # the feed is signed by the same keys as the manifest, with root_version
            assert {keyid(k.public_key()) for k in snap.feed_signers} == manifest_kids
            feed = await c.get("/v1/orgs/acme/endpoints",
                               headers={"X-Cert": base64.b64encode(snap.certs["db-1"].encode()).decode()})
            assert feed.status == 200, await feed.text()
            env = await feed.read()
            assert {k for k, _ in parse_envelope(env).signatures} == manifest_kids
            assert json.loads(parse_envelope(env).payload)["root_version"] == 2
            # the hub re-publishes when the overlap ends, not only at its periodic refresh
            clock[0] = rot.overlap_until - 60
            assert await hub.publish("c3")
            assert hub.status.refresh_at == rot.overlap_until
            assert (await c.get("/v1/orgs/acme/roots/3")).status == 404
            clock[0] = rot.overlap_until
            await hub.reconcile("c3")  # the served head; its refresh is due: it builds
            assert hub.snapshot.next_change_at is None
            three = await c.get("/v1/orgs/acme/roots/3")
            assert three.status == 200
            verify_next(root2, await three.read())
        await hub.close()
        pipeline.close()

    asyncio.run(go())
