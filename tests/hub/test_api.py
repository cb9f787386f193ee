"""The hub API in-process (aiohttp test client; the client certificate is injected
through ``make_app(peer_cert=...)``): shapes, ETags, long-polls, the authorization
matrix, bad requests, a bad commit keeping the last good manifest."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from reconciler.hub.api import MAX_BODY, MAX_OBSERVATIONS, make_app
from reconciler.hub.feed import FEED_PAYLOAD_TYPE
from reconciler.hub.feedstore import FeedStore
from reconciler.hub.serve import Hub
from reconciler.pki.envelope import OrgTrust, open_envelope

from .conftest_serve import NOW, FakePipeline, make_org, run

CERT_HEADER = "X-Test-Client-Cert"


def header_cert(request: web.Request) -> str | None:
    raw = request.headers.get(CERT_HEADER)
    return base64.b64decode(raw).decode() if raw else None


def as_device(creds: Any) -> dict[str, str]:
    return {CERT_HEADER: base64.b64encode(creds.cert_pem.encode()).decode()}


class World:
    def __init__(self, tmp: Path) -> None:
        self.acme = make_org("acme", "10.20.0.0/16")
        self.beta = make_org("beta", "10.30.0.0/16")
        self.laptop = self.acme.add_device("laptop")
        self.server = self.acme.add_device("server")
        self.relay = self.acme.add_device("relay-1", relay=True)
        self.phone = self.beta.add_device("phone")
        self.pipeline = FakePipeline([self.acme, self.beta])
        self.clock = [NOW]
        self.db = f"sqlite:///{tmp}/hub.db"
        self.hub: Hub | None = None

    def new_hub(self) -> Hub:
        self.hub = Hub(pipeline=self.pipeline, store=FeedStore(self.db),
                       now=lambda: self.clock[0])
        return self.hub


@asynccontextmanager
async def client(world: World, commit: str | None = "c1"):
    hub = world.new_hub()
    await hub.start()
    if commit:
        assert await hub.publish(commit)
    async with TestClient(TestServer(make_app(hub, peer_cert=header_cert))) as c:
        yield c, hub
    await hub.close()


def report_body(device: str, **extra: Any) -> dict[str, Any]:
    body = {"device": device, "candidates": [{"kind": "stun", "address": "203.0.113.7:51820"}],
            "mapping": "independent", "listen_port": 51820, "serial": 1}
    body.update(extra)
    return body


def test_manifest_etag_gzip_and_304(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, hub):
            dev = as_device(w.laptop)  # the manifest needs mTLS
            r = await c.get("/v1/orgs/acme/manifest",
                            headers={**dev, "Accept-Encoding": "identity"})
            assert r.status == 200 and r.headers["ETag"] == '"1"'
            body = await r.read()
            trust = OrgTrust(keys={_kid(w): w.acme.keys.signing_key.public_key()})
            opened = open_envelope(body, trust, "application/vnd.meshops.manifest+json")
            assert json.loads(opened.payload)["serial"] == 1
            assert body == hub.org("acme").manifest
            r = await c.get("/v1/orgs/acme/manifest", headers={**dev, "Accept-Encoding": "gzip"},
                            auto_decompress=False)
            assert r.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(await r.read()) == body
            r = await c.get("/v1/orgs/acme/manifest", headers={**dev, "If-None-Match": '"1"'})
            assert r.status == 304 and r.headers["ETag"] == '"1"'
            r = await c.get("/v1/orgs/acme/manifest", headers={**dev, "If-None-Match": '"0"'})
            assert r.status == 200
    run(go())


def test_manifest_long_poll_wakes_on_new_commit(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, hub):
            dev = as_device(w.laptop)  # the manifest needs mTLS
            poll = asyncio.create_task(c.get("/v1/orgs/acme/manifest?wait=10",
                                             headers={**dev, "If-None-Match": '"1"'}))
            await asyncio.sleep(0.2)
            assert not poll.done()
            assert await hub.publish("c2")
            r = await asyncio.wait_for(poll, 5)
            assert r.status == 200 and r.headers["ETag"] == '"2"'
            # nothing newer: the long-poll times out with 304
            r = await c.get("/v1/orgs/acme/manifest?wait=1",
                            headers={**dev, "If-None-Match": '"2"'})
            assert r.status == 304
    run(go())


def test_bad_commit_keeps_last_good_manifest_and_reports_error(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        w.pipeline.bad.add("bad")
        async with client(w) as (c, hub):
            dev = as_device(w.laptop)  # the manifest needs mTLS
            before = await (await c.get("/v1/orgs/acme/manifest", headers=dev)).read()
            assert not await hub.publish("bad")
            r = await c.get("/v1/orgs/acme/manifest", headers=dev)
            assert r.status == 200 and await r.read() == before
            status = await (await c.get("/v1/status")).json()
            assert status["serving_commit"] == "c1" and status["branch_commit"] == "bad"
            assert status["healthy"] is False
            assert "bad.yaml:3" in status["last_error"]
            metrics = await (await c.get("/metrics")).text()
            assert "meshops_hub_publish_failing 1.0" in metrics
            assert await hub.publish("c3")
            status = await (await c.get("/v1/status")).json()
            assert status["healthy"] is True and status["last_error"] is None
    run(go())


def test_cert_endpoint_is_public(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, _):
            r = await c.get("/v1/orgs/acme/devices/laptop/cert")
            doc = await r.json()
            assert doc == {"cert": w.laptop.cert_pem, "ca": w.acme.keys.ca_pem}
            r = await c.get("/v1/orgs/acme/devices/nope/cert")
            assert r.status == 404 and (await r.json())["error"] == "unknown-device"
    run(go())


def test_report_then_signed_feed(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, _):
            obs = [{"peer": "server", "endpoint": "198.51.100.9:40000",
                    "last_handshake": int(NOW) - 10}]
            r = await c.post("/v1/orgs/acme/endpoints", json=report_body("laptop"),
                             headers=as_device(w.laptop))
            doc = await r.json()
            assert r.status == 200 and doc["accepted"] is True and doc["changed"] is True
            assert doc["observed"].startswith("127.0.0.1:")
            # the relay's WireGuard saw server: a reflection the hub keeps
            r = await c.post("/v1/orgs/acme/endpoints",
                             json=report_body("relay-1", candidates=[], observations=obs),
                             headers=as_device(w.relay))
            assert (await r.json())["reflections"] == {"kept": 1, "dropped": {}}
            r = await c.get("/v1/orgs/acme/endpoints", headers=as_device(w.server))
            assert r.status == 200
            trust = OrgTrust(keys={_kid(w): w.acme.keys.signing_key.public_key()})
            feed = json.loads(open_envelope(await r.read(), trust, FEED_PAYLOAD_TYPE).payload)
            assert feed["org"] == "acme" and feed["revision"] == 1
            entries = {e["device"]: e for e in feed["entries"]}
            assert entries["laptop"]["candidates"] == [
                {"kind": "stun", "address": "203.0.113.7:51820"}]
            assert entries["laptop"]["public_ip"] == "127.0.0.1"
            assert entries["laptop"]["mapping"] == "independent"
            assert entries["laptop"]["updated_at"] == int(NOW)
            # server never reported, but the relay's WireGuard saw it: a reflected candidate
            assert entries["server"]["candidates"] == [
                {"kind": "reflected", "address": "198.51.100.9:40000"}]
            assert entries["server"]["public_ip"] is None
    run(go())


def _kid(w: World) -> str:
    from reconciler.pki.keys import keyid

    return keyid(w.acme.keys.signing_key.public_key())


def test_feed_long_poll_wakes_on_report(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, _):
            r = await c.get("/v1/orgs/acme/endpoints?since=0&wait=1", headers=as_device(w.server))
            assert r.status == 304 and r.headers["X-Feed-Revision"] == "0"
            poll = asyncio.create_task(c.get("/v1/orgs/acme/endpoints?since=0&wait=10",
                                             headers=as_device(w.server)))
            await asyncio.sleep(0.2)
            assert not poll.done()
            r = await c.post("/v1/orgs/acme/endpoints", json=report_body("laptop"),
                             headers=as_device(w.laptop))
            assert r.status == 200
            r = await asyncio.wait_for(poll, 5)
            assert r.status == 200 and r.headers["X-Feed-Revision"] == "1"
    run(go())


def test_authorization_matrix(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        expired = w.acme.add_device("old", now=NOW - 40 * 86400, lifetime=86400)
        revoked = w.acme.add_device("stolen")
        w.pipeline.revoked["acme"] = frozenset({revoked.serial})
        async with client(w) as (c, hub):
            post = "/v1/orgs/acme/endpoints"
            # org B's device reading org A: 403, on the feed and the manifest
            for url in ("/v1/orgs/acme/endpoints", "/v1/orgs/acme/manifest"):
                r = await c.get(url, headers=as_device(w.phone))
                assert r.status == 403, url
                assert (await r.json())["error"] == "forbidden"
            r = await c.post(post, json=report_body("laptop"), headers=as_device(w.phone))
            assert r.status == 403
            # a report for another device of the same org: 403
            r = await c.post(post, json=report_body("server"), headers=as_device(w.laptop))
            assert r.status == 403 and "laptop" in (await r.json())["message"]
            # no certificate on an identity endpoint (the manifest too): 401
            r = await c.post(post, json=report_body("laptop"))
            assert r.status == 401 and (await r.json())["error"] == "no-certificate"
            for url in ("/v1/orgs/acme/endpoints", "/v1/orgs/acme/manifest",
                        "/v1/orgs/beta/manifest", "/v1/orgs/acme/manifest?wait=5"):
                r = await c.get(url, headers={"If-None-Match": '"1"'} if "wait" in url else {})
                assert r.status == 401, url
                assert (await r.json())["error"] == "no-certificate"
            # expired and revoked certificates are refused
            r = await c.post(post, json=report_body("old"), headers=as_device(expired))
            assert r.status == 401 and (await r.json())["error"] == "expired"
            r = await c.post(post, json=report_body("stolen"), headers=as_device(revoked))
            assert r.status == 401 and (await r.json())["error"] == "revoked"
            for url in ("/v1/orgs/acme/endpoints", "/v1/orgs/acme/manifest"):
                r = await c.get(url, headers=as_device(revoked))
                assert r.status == 401 and (await r.json())["error"] == "revoked", url
                r = await c.get(url, headers=as_device(expired))
                assert r.status == 401 and (await r.json())["error"] == "expired", url
            # the own device, own org: fine
            r = await c.post(post, json=report_body("laptop"), headers=as_device(w.laptop))
            assert r.status == 200
            r = await c.get("/v1/orgs/beta/endpoints", headers=as_device(w.phone))
            assert r.status == 200
            r = await c.get("/v1/orgs/beta/manifest", headers=as_device(w.phone))
            assert r.status == 200 and r.headers["ETag"] == '"1"'
            # public: a device's certificate (bootstrap) and the CRL need no certificate
            for url in ("/v1/orgs/acme/devices/laptop/cert", "/v1/orgs/acme/crl"):
                assert (await c.get(url)).status == 200, url
            assert hub.store.total_reports() == 1
            metrics = hub.metrics.render().decode()
            assert 'meshops_hub_auth_refused_total{reason="revoked"}' in metrics
    run(go())


def test_bad_requests_get_json_4xx(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, hub):
            post, dev = "/v1/orgs/acme/endpoints", as_device(w.laptop)
            cases: list[tuple[Any, int, str]] = [
                (b"{not json", 400, "bad-json"),
                (b"[1, 2]", 400, "bad-report"),
                (json.dumps(report_body("laptop", mapping="weird")).encode(), 400, "bad-report"),
                (json.dumps(report_body("laptop", candidates=[{"kind": "stun",
                                        "address": "not-an-ip:1"}])).encode(), 400,
                 "bad-candidate"),
                (json.dumps(report_body("laptop", listen_port=70000)).encode(), 400, "bad-report"),
                (json.dumps(report_body("laptop", extra=1)).encode(), 400, "bad-report"),
                (json.dumps(report_body("laptop", observations=[{"peer": "x"}])).encode(), 400,
                 "bad-report"),
                (b"\xff\xfe", 400, "bad-json"),
                (b"x" * (MAX_BODY + 1), 413, "too-large"),
            ]
            for body, status, code in cases:
                r = await c.post(post, data=body, headers={**dev,
                                 "Content-Type": "application/json"})
                assert r.status == status, (body[:40], await r.text())
                assert (await r.json())["error"] == code
            for url, status in (("/v1/orgs/nope/manifest", 404), ("/v1/nothing", 404),
                                ("/v1/orgs/acme/manifest?wait=abc", 400),
                                ("/v1/orgs/acme/manifest?wait=100000", 400),
                                ("/v1/orgs/acme/endpoints?since=-1", 400)):
                r = await c.get(url, headers=dev)
                assert r.status == status, url
                assert "error" in await r.json()
            r = await c.delete("/v1/orgs/acme/manifest")
            assert r.status == 405 and (await r.json())["error"] == "method-not-allowed"
            # and the server still works
            r = await c.post(post, json=report_body("laptop"), headers=dev)
            assert r.status == 200
            assert hub.store.total_reports() == 1
    run(go())


def test_nothing_published_yet_is_404_and_status_says_so(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w, commit=None) as (c, _):
            dev = as_device(w.laptop)  # the manifest needs mTLS
            r = await c.get("/v1/orgs/acme/manifest", headers=dev)
            assert r.status == 404
            status = await (await c.get("/v1/status")).json()
            assert status["serving_commit"] is None and status["healthy"] is False
    run(go())


def test_status_rollout_view_and_crl(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        w.pipeline.revoked["acme"] = frozenset({7, 9})
        async with client(w) as (c, hub):
            await hub.publish("c2")  # serial 2
            await c.post("/v1/orgs/acme/endpoints", json=report_body("laptop", serial=2),
                         headers=as_device(w.laptop))
            await c.post("/v1/orgs/acme/endpoints", json=report_body("server", serial=1),
                         headers=as_device(w.server))
            status = await (await c.get("/v1/status")).json()
            acme = status["orgs"]["acme"]
            assert acme["serial"] == 2 and acme["commit"] == "c2"
            assert acme["agents_current"] == 1 and acme["rollout"] == {"2": 1, "1": 1}
            assert acme["agents"]["laptop"]["applied_serial"] == 2
            crl = await (await c.get("/v1/orgs/acme/crl")).json()
            assert crl["revoked"] == [7, 9] and crl["serial"] == 2
    run(go())


def test_reports_survive_a_restart_sqlite(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, _):
            for i in range(20):
                r = await c.post("/v1/orgs/acme/endpoints", json=report_body("laptop", serial=i),
                                 headers=as_device(w.laptop))
                assert r.status == 200
        async with client(w) as (c, hub):
            assert hub.store.total_reports() == 20
            r = await c.get("/v1/orgs/acme/endpoints", headers=as_device(w.server))
            # twenty reports of the same endpoints: one change, one revision
            assert r.headers["X-Feed-Revision"] == "1"
            assert hub.store.agent_serials()["acme"]["laptop"][0] == 19
    run(go())


def test_the_served_commit_is_republished_when_the_refresh_is_due(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, hub):
            dev = as_device(w.laptop)  # the manifest needs mTLS
            requeue = await hub.reconcile("c1")  # served already: nothing to build
            assert w.pipeline.builds == ["c1"] and requeue == hub.refresh_every
            w.clock[0] += hub.refresh_every - 1
            assert await hub.reconcile("c1") == 1.0 and w.pipeline.builds == ["c1"]
            w.clock[0] += 1
            assert await hub.reconcile("c1") == hub.refresh_every
            assert w.pipeline.builds == ["c1", "c1"]
            r = await c.get("/v1/orgs/acme/manifest", headers=dev)
            assert r.headers["ETag"] == '"2"'
    run(go())


def test_status_is_public_but_reveals_no_secrets(tmp_path: Path) -> None:
    """/v1/status needs no certificate (operators only, by listen address or
    firewall), so a publish error is shown with credentials and keys redacted."""
    from reconciler.errors import SecretsError
    from reconciler.hub.snapshot import Snapshot

    secret_key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBADSECRET\n" \
        "-----END PRIVATE KEY-----"

    class Leaky(FakePipeline):
        def build(self, rev: str, now: float) -> Snapshot:
            if rev == "leak":
                raise SecretsError(f"sops: https://bob:ghp_T0KEN@git.example/r.git "
                                   f"password=hunter2 {secret_key}")
            return super().build(rev, now)

    async def go() -> None:
        w = World(tmp_path)
        w.pipeline = Leaky([w.acme, w.beta])
        async with client(w) as (c, hub):
            assert not await hub.publish("leak")
            r = await c.get("/v1/status")  # no client certificate
            assert r.status == 200
            text = await r.text()
            doc = json.loads(text)
            assert doc["healthy"] is False and "git.example/r.git" in doc["last_error"]
            for secret in ("ghp_T0KEN", "bob:", "hunter2", "BADSECRET", "PRIVATE KEY-----"):
                assert secret not in text, secret
            assert "https://***@git.example" in doc["last_error"]
    run(go())


# -- hostile input (issue 10): never a 500, always a JSON reason ----------------------------

def test_hostile_bodies_get_a_4xx_with_the_reason_and_no_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    deep_list = b"[" * 100_000 + b"]" * 100_000
    deep_obj = b'{"a":' * 30_000 + b"1" + b"}" * 30_000
    nested_in_report = json.dumps(report_body("laptop")).encode()[:-1] + \
        b', "observations": [' + b"[" * 5_000 + b"]" * 5_000 + b"]}"
    just_too_deep = b'{"device": "laptop", "candidates": ' + b"[" * 8 + b"]" * 8 + b"}"
    huge_int = json.dumps(report_body("laptop")).encode()[:-1] + b', "serial": ' + \
        b"9" * 5_000 + b"}"
    cases = [
        (deep_list, 400, "too-deep"),
        (deep_obj, 400, "too-deep"),
        (nested_in_report, 400, "too-deep"),
        (just_too_deep, 400, "too-deep"),
        (huge_int, 400, "bad-json"),
        (b'{"device": NaN}', 400, "bad-json"),
        (b"\xff\xfe{}", 400, "bad-json"),
    ]

    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, _):
            for body, status, code in cases:
                r = await c.post("/v1/orgs/acme/endpoints", data=body,
                                 headers={**as_device(w.laptop),
                                          "Content-Type": "application/json"})
                doc = await r.json()
                assert (r.status, doc["error"]) == (status, code), (body[:30], doc)
                assert "the report body" in doc["message"]
            r = await c.post("/v1/orgs/acme/endpoints", json=report_body("laptop"),
                             headers=as_device(w.laptop))
            assert r.status == 200
    with caplog.at_level(logging.DEBUG):
        run(go())
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_malformed_if_none_match_is_no_match_never_a_500(tmp_path: Path) -> None:
    ignored = ["9" * 5_000, '"' + "9" * 5_000 + '"', "W/\"" + "9" * 5_000 + '"', "\u00b2",
               '"\u00b2"', "\u0661", '"\u0661\u0662"', "W/\"\u0663\"", "*", ",,,", '"-1"',
               '"1.0"', '"0x1"', '" 1"', '"1_0"', '"' + "9" * 20 + '"']

    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, _):
            dev = as_device(w.laptop)
            for value in ignored:
                r = await c.get("/v1/orgs/acme/manifest",
                                headers={**dev, "If-None-Match": value})
                assert r.status == 200, value[:20]
                assert r.headers["ETag"] == '"1"'
            # a good tag among bad ones still matches
            r = await c.get("/v1/orgs/acme/manifest",
                            headers={**dev, "If-None-Match": '"\u0661", "' + "9" * 5000 + '", "1"'})
            assert r.status == 304
            for url in ("/v1/orgs/acme/manifest?wait=\u00b2", "/v1/orgs/acme/manifest?wait=\u0661",
                        "/v1/orgs/acme/endpoints?since=" + "9" * 5_000,
                        "/v1/orgs/acme/endpoints?since=\u0661\u0662", "/v1/orgs/acme/endpoints?since=1e3",
                        "/v1/orgs/acme/endpoints?since=%201"):
                r = await c.get(url, headers=dev)
                doc = await r.json()
                assert (r.status, doc["error"]) == (400, "bad-parameter"), url[:60]
                assert len(doc["message"]) < 200  # the 5,000 digits are not echoed back
    run(go())


def test_report_addresses_with_non_ascii_digits_are_refused(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, _):
            for address in ("203.0.113.7:\u0665\u0661\u0668\u0662\u0660",
                            "203.0.113.7:\u00b9", "\u0662\u0660\u0663.0.113.7:51820",
                            "203.0.113.7:" + "5" * 5_000, "203.0.113.7:+80", "203.0.113.7: 80"):
                body = report_body("laptop", candidates=[{"kind": "stun", "address": address}])
                r = await c.post("/v1/orgs/acme/endpoints", json=body,
                                 headers=as_device(w.laptop))
                assert r.status == 400, address[:30]
                doc = await r.json()
                assert doc["error"] == "bad-candidate"
                assert doc["reason"] in ("malformed", "bad-port") and doc["field"] == \
                    "candidates[0].address"
    run(go())


LONGEST_ADDRESS = "[2001:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535"  # global unicast


def maximal_report(observations: int = MAX_OBSERVATIONS) -> dict[str, Any]:
    """Every list at its limit, every entry at its largest valid size."""
    peer = "p" * 63
    return report_body(
        "laptop",
        candidates=[{"kind": "reflected", "address": LONGEST_ADDRESS}] * 32,
        listen_port=65535, serial=2**62,
        observations=[{"peer": peer, "endpoint": LONGEST_ADDRESS, "last_handshake": 2**62}]
        * observations,
    )


def test_a_maximal_report_fits_the_body_limit_and_one_more_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, hub):
            dev = {**as_device(w.laptop), "Content-Type": "application/json"}
            for dumps in (json.dumps, lambda d: json.dumps(d, separators=(",", ":"))):
                body = dumps(maximal_report()).encode()
                assert 64 * 1024 < len(body) <= MAX_BODY  # the old 64 KiB limit was too small
                r = await c.post("/v1/orgs/acme/endpoints", data=body, headers=dev)
                assert r.status == 200, await r.text()
            # one observation over the limit: a clear reason
            r = await c.post("/v1/orgs/acme/endpoints",
                             data=json.dumps(maximal_report(MAX_OBSERVATIONS + 1)), headers=dev)
            doc = await r.json()
            assert r.status == 400 and doc["error"] == "bad-report"
            assert f"at most {MAX_OBSERVATIONS}" in doc["message"]
            # a body over the limit: 413 that names the limit and why
            big = json.dumps(maximal_report(2 * MAX_OBSERVATIONS)).encode()
            assert len(big) > MAX_BODY
            r = await c.post("/v1/orgs/acme/endpoints", data=big, headers=dev)
            doc = await r.json()
            assert r.status == 413 and doc["error"] == "too-large"
            assert str(MAX_BODY) in doc["message"] and "1024 observations" in doc["message"]
            assert hub.store.total_reports() == 2
    run(go())


def test_a_bug_clients_can_trigger_logs_one_traceback_not_one_per_request(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        w = World(tmp_path)
        async with client(w) as (c, hub):
            async def broken() -> dict[str, object]:
                raise RuntimeError("a bug in the status page")

            hub.status_doc = broken  # type: ignore[method-assign]
            for _ in range(50):
                r = await c.get("/v1/status")
                assert r.status == 500 and (await r.json())["error"] == "internal"
            assert (await c.get("/v1/orgs/acme/crl")).status == 200  # still serving
    with caplog.at_level(logging.ERROR, logger="reconciler.hub.api"):
        run(go())
    records = [r for r in caplog.records if r.name == "reconciler.hub.api"]
    assert len(records) == 50 and sum(1 for r in records if r.exc_info) == 1
    assert all("\n" not in r.getMessage() for r in records)
