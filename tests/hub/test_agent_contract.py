"""The agent's own hub client (``reconciler.agent.fetch``, stdlib http.client with
hostname verification) against a running ``hub serve``: the API shapes in
docs/architecture.md, end to end over mTLS."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from reconciler.agent.endpoints import open_feed
from reconciler.agent.fetch import Fetcher, TlsConfig
from reconciler.errors import ConfigError
from reconciler.hub.daemon import ServeConfig, start
from reconciler.pki.envelope import load_trust, trust_entry

from .conftest_serve import FakePipeline, make_org, run, write_pem_files
from .test_serve_tls import init_repo, wait_for


def test_agent_fetcher_talks_to_hub_serve(tmp_path: Path) -> None:
    now = time.time()
    acme = make_org("acme", "10.20.0.0/16")  # "acme" sorts first: the default org for SNI
    laptop = acme.add_device("laptop", now, relay=True)  # relays may reflect others
    acme.add_device("server", now)  # a peer that only shows up through reflection
    cert, key = write_pem_files(tmp_path, laptop)
    ca = tmp_path / "acme-ca.crt"
    ca.write_text(acme.keys.ca_pem)
    trust = load_trust(json.dumps({"orgs": {"acme": trust_entry(
        [acme.keys.signing_key.public_key()], acme.keys.ca_pem)}}))
    repo = init_repo(tmp_path / "repo")

    async def go() -> None:
        running = await start(ServeConfig(
            repo=str(repo), listen="127.0.0.1:0", db=f"sqlite:///{tmp_path}/hub.db",
            state_dir=str(tmp_path / "state"), pipeline=FakePipeline([acme])))
        try:
            await wait_for(lambda: running.hub.snapshot is not None)
            base = f"https://localhost:{running.port}/v1/orgs/acme"
            fetcher = Fetcher(tls=TlsConfig(cert=cert, key=key, ca=str(ca)), timeout=5)
            got = await asyncio.to_thread(fetcher.get, f"{base}/manifest")
            assert got.status == 200 and got.etag == '"1"'
            assert got.body == running.hub.org("acme").manifest
            again = await asyncio.to_thread(fetcher.get, f"{base}/manifest", etag=got.etag)
            assert again.status == 304
            answer = await asyncio.to_thread(fetcher.post_json, f"{base}/endpoints", {
                "device": "laptop", "mapping": "independent", "listen_port": 51820,
                "serial": 1, "candidates": [{"kind": "stun", "address": "203.0.113.4:51820"}],
                "observations": [{"peer": "server", "endpoint": "198.51.100.8:51820",
                                  "last_handshake": int(time.time())}]})
            assert answer["accepted"] is True and answer["observed"].startswith("127.0.0.1:")
            feed_resp = await asyncio.to_thread(fetcher.get, f"{base}/endpoints",
                                                params={"since": 0})
            feed = open_feed(feed_resp.body, trust, "acme")
            entries = {e.device: e for e in feed.entries}
            assert feed.revision == 1
            assert entries["laptop"].candidates[0].address == "203.0.113.4:51820"
            assert entries["server"].candidates[0].kind == "reflected"
            doc = await asyncio.to_thread(fetcher.get, f"{base}/devices/laptop/cert")
            assert json.loads(doc.body)["cert"] == laptop.cert_pem
            # all of it over one kept-open mTLS connection (agent.fetch keeps it)
            assert fetcher.transport.connections == 1

            def open_device_connections() -> float | None:
                return running.hub.metrics.registry.get_sample_value(
                    "meshops_hub_connections", {"kind": "device"})

            assert open_device_connections() == 1
            fetcher.close()
            await wait_for(lambda: open_device_connections() == 0)
        finally:
            await running.stop()

    run(go())


def test_agent_bootstrap_cert_first_then_manifest_over_mtls(tmp_path: Path) -> None:
    """A new device has no ``device.crt``: the hub refuses its manifest GET (401),
    serves the public certificate endpoint, and after ``reset_tls`` (the file now
    exists) the same fetcher gets the manifest over mTLS."""
    now = time.time()
    acme = make_org("acme", "10.20.0.0/16")
    laptop = acme.add_device("laptop", now)
    cert_path, key = write_pem_files(tmp_path, laptop)
    Path(cert_path).unlink()  # what `agent init` leaves: the identity key, no certificate
    ca = tmp_path / "acme-ca.crt"
    ca.write_text(acme.keys.ca_pem)
    repo = init_repo(tmp_path / "repo")

    async def go() -> None:
        running = await start(ServeConfig(
            repo=str(repo), listen="127.0.0.1:0", db=f"sqlite:///{tmp_path}/hub.db",
            state_dir=str(tmp_path / "state"), pipeline=FakePipeline([acme])))
        try:
            await wait_for(lambda: running.hub.snapshot is not None)
            base = f"https://localhost:{running.port}/v1/orgs/acme"
            fetcher = Fetcher(tls=TlsConfig(cert=cert_path, key=key, ca=str(ca)), timeout=5)
            with pytest.raises(ConfigError, match="401: no-certificate"):
                await asyncio.to_thread(fetcher.get, f"{base}/manifest")
            doc = await asyncio.to_thread(fetcher.get, f"{base}/devices/laptop/cert")
            Path(cert_path).write_text(json.loads(doc.body)["cert"])
            fetcher.reset_tls()
            got = await asyncio.to_thread(fetcher.get, f"{base}/manifest")
            assert got.status == 200 and got.body == running.hub.org("acme").manifest
        finally:
            await running.stop()

    run(go())
