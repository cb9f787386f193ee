"""``hub serve`` under strict X.509: what a Python 3.13 agent sees.

Python 3.13's default SSL context sets ``VERIFY_X509_STRICT`` (and
``VERIFY_X509_PARTIAL_CHAIN``); on 3.11 the tests add both to
``ssl.create_default_context``, the one call the agent's client
(``reconciler.agent.fetch``) makes, and drive that client unchanged against a
real ``hub serve`` (reconciler.hub.daemon.start) over TLS on loopback. Also:
``openssl s_client -x509_strict`` against the same listener, the org CA's
DNS subtree applied to ``--tls-name``, and the server key kept in a memfd.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pki.forge import forge

from reconciler.agent.fetch import Fetcher, TlsConfig
from reconciler.errors import ConfigError
from reconciler.hub import tls as hub_tls
from reconciler.hub.daemon import ServeConfig, start

from .conftest_serve import FakePipeline, make_org, run, write_pem_files
from .test_serve_tls import init_repo, wait_for

STRICT = ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN


@pytest.fixture
def strict_default_context(monkeypatch: pytest.MonkeyPatch) -> list[ssl.SSLContext]:
    """Make ``ssl.create_default_context`` behave as on Python 3.13; returns the
    contexts it made, so a test can check the agent really used one."""
    made: list[ssl.SSLContext] = []
    original = ssl.create_default_context

    def strict(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        ctx = original(*args, **kwargs)
        ctx.verify_flags |= STRICT
        made.append(ctx)
        return ctx

    monkeypatch.setattr(ssl, "create_default_context", strict)
    return made


def serve_config(tmp_path: Path, orgs: list, **kw: Any) -> ServeConfig:
    return ServeConfig(repo=str(init_repo(tmp_path / "repo")), listen="127.0.0.1:0",
                       db=f"sqlite:///{tmp_path}/hub.db", state_dir=str(tmp_path / "state"),
                       pipeline=FakePipeline(orgs), **kw)


def agent_fetcher(tmp_path: Path, org: Any, creds: Any) -> Fetcher:
    """What reconciler.agent.runtime.make_fetcher builds for a hub: the device
    certificate, the pinned org CA, and ``ORG.hub`` as SNI and verified name."""
    cert, key = write_pem_files(tmp_path, creds)
    ca = tmp_path / f"{org.name}-ca.crt"
    ca.write_text(org.keys.ca_pem)
    return Fetcher(tls=TlsConfig(cert=cert, key=key, ca=str(ca),
                                 server_name=f"{org.name}.hub"), timeout=5)


def test_strict_agent_fetches_through_hub_serve(tmp_path: Path, strict_default_context,
                                                caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    acme, beta = make_org("acme", "10.20.0.0/16"), make_org("beta", "10.30.0.0/16")
    laptop, phone = acme.add_device("laptop", now), beta.add_device("phone", now)
    acme.add_device("server", now)
    caplog.set_level(logging.WARNING, logger="reconciler.hub.tls")

    async def go() -> None:
        running = await start(serve_config(tmp_path, [acme, beta],
                                           tls_names=("hub.example.com",)))
        try:
            await wait_for(lambda: running.hub.snapshot is not None)
            for org, creds in ((acme, laptop), (beta, phone)):
                # the agent addresses the hub by IP; SNI and verification use ORG.hub
                base = f"https://127.0.0.1:{running.port}/v1/orgs/{org.name}"
                fetcher = agent_fetcher(tmp_path, org, creds)
                got = await asyncio.to_thread(fetcher.get, f"{base}/manifest")
                assert got.status == 200
                assert got.body == running.hub.org(org.name).manifest
                again = await asyncio.to_thread(fetcher.get, f"{base}/manifest", etag=got.etag)
                assert again.status == 304
                doc = await asyncio.to_thread(fetcher.get,
                                              f"{base}/devices/{creds.name}/cert")
                assert json.loads(doc.body)["cert"] == creds.cert_pem
                answer = await asyncio.to_thread(fetcher.post_json, f"{base}/endpoints", {
                    "device": creds.name, "mapping": "independent", "listen_port": 51820,
                    "serial": 1, "candidates": [{"kind": "stun",
                                                 "address": "203.0.113.4:51820"}],
                    "observations": []})
                assert answer["accepted"] is True
            # the certificates the hub served: strict profile, names inside the subtree
            for org in ("acme", "beta"):
                served = running.tls.certificate(org)
                cert = x509.load_pem_x509_certificate(served.cert_pem.encode())
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                assert san.value.get_values_for_type(x509.DNSName) == [
                    f"{org}.hub", "localhost", f"{org}.localhost"]
                cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        finally:
            await running.stop()

    run(go())
    assert strict_default_context, "the agent's client did not build its context"
    assert all(c.verify_flags & ssl.VERIFY_X509_STRICT for c in strict_default_context)
    refused = sorted(r.getMessage().split(":")[0] for r in caplog.records
                     if "leaves out" in r.getMessage())
    assert refused == [  # two names x two orgs, once each however often the hub updates
        "hub certificate for org acme leaves out acme.hub.example.com",
        "hub certificate for org acme leaves out hub.example.com",
        "hub certificate for org beta leaves out beta.hub.example.com",
        "hub certificate for org beta leaves out hub.example.com"]


def test_strict_agent_refuses_a_hub_certificate_without_aki(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug this guards against: the hub certificate of old had no AKI. Served
    again (forged), a lax client connects and the agent, strict on every
    Python, refuses, naming why."""
    now = time.time()
    acme = make_org("acme", "10.20.0.0/16")
    laptop = acme.add_device("laptop", now)

    def old_style(keys: Any, names: Any, at: float) -> hub_tls.ServerCert:
        pem, key = forge(keys, at, dns=list(names), aki=False, cn="meshops hub (old)")
        return hub_tls.ServerCert(keys.org, pem, key, keys.ca_pem, at + 86400)

    monkeypatch.setattr(hub_tls, "issue_server_cert", old_style)

    async def go() -> None:
        running = await start(serve_config(tmp_path, [acme]))
        try:
            await wait_for(lambda: running.hub.snapshot is not None)
            url = f"https://127.0.0.1:{running.port}/v1/orgs/acme/manifest"
            cert, key = write_pem_files(tmp_path, laptop)
            (tmp_path / "acme-ca.crt").write_text(acme.keys.ca_pem)
            lax = ssl.create_default_context(cafile=str(tmp_path / "acme-ca.crt"))
            lax.verify_flags &= ~STRICT  # Python < 3.13 defaults: the forged chain verifies
            lax.load_cert_chain(cert, key)

            def handshake() -> None:
                with socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw, \
                        lax.wrap_socket(raw, server_hostname="acme.hub"):
                    pass

            await asyncio.to_thread(handshake)
            # the agent itself is strict (agent.fetch sets VERIFY_X509_STRICT) and refuses
            with pytest.raises(ConfigError, match="Missing Authority Key Identifier"):
                await asyncio.to_thread(agent_fetcher(tmp_path, acme, laptop).get, url)
        finally:
            await running.stop()

    run(go())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_openssl_s_client_x509_strict_against_hub_serve(tmp_path: Path) -> None:
    acme, beta = make_org("acme", "10.20.0.0/16"), make_org("beta", "10.30.0.0/16")

    def s_client(port: int, org: Any, sni: str) -> subprocess.CompletedProcess:
        ca = tmp_path / f"{org.name}.pem"
        ca.write_text(org.keys.ca_pem)
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni,
             "-CAfile", str(ca), "-x509_strict", "-verify_return_error",
             "-verify_hostname", sni],
            input="", capture_output=True, text=True, timeout=30, check=False)

    async def go() -> None:
        running = await start(serve_config(tmp_path, [acme, beta]))
        try:
            await wait_for(lambda: running.hub.snapshot is not None)
            for org in (acme, beta):
                out = await asyncio.to_thread(s_client, running.port, org, f"{org.name}.hub")
                assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
                assert "Verify return code: 0 (ok)" in out.stdout
            # beta's CA cannot vouch for acme's hub name
            out = await asyncio.to_thread(s_client, running.port, beta, "acme.hub")
            assert out.returncode != 0
        finally:
            await running.stop()

    run(go())


def test_server_key_is_loaded_from_a_memfd_and_never_a_file(tmp_path: Path) -> None:
    acme = make_org("acme", "10.20.0.0/16")
    cert = hub_tls.issue_server_cert(acme.keys, ["acme.hub"], time.time())
    assert cert.key_pem not in repr(cert)
    seen: list[tuple[str, str, int, bytes]] = []

    class Recorder:
        def load_cert_chain(self, certfile: str, keyfile: str | None = None) -> None:
            st = os.stat(certfile)
            with open(certfile, "rb") as f:
                seen.append((certfile, os.readlink(certfile), st.st_mode & 0o777, f.read()))
            assert keyfile is None

    hub_tls._load_chain(Recorder(), cert.cert_pem, cert.key_pem)  # type: ignore[arg-type]
    (path, target, mode, data) = seen[0]
    assert path.startswith("/proc/self/fd/")
    assert target.startswith("/memfd:meshops-hub-tls")  # anonymous memory, no directory entry
    assert mode == 0o600
    assert data.decode() == cert.key_pem + cert.cert_pem
    # and a real context loads it (the handshake tests use the same path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    hub_tls._load_chain(ctx, cert.cert_pem + acme.keys.ca_pem, cert.key_pem)


def test_without_memfd_the_hub_refuses_to_issue_and_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "memfd_create")
    with pytest.raises(ConfigError, match="memfd_create .* --tls-cert/--tls-key"):
        hub_tls.TlsManager(["localhost"])
