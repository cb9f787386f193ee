"""Run the real OpenID provider (tests/oidc/provider.mjs, npm ``oidc-provider`` 8)
on loopback for the tests, and act as the user's browser at its pages.

``Provider(workdir).start()`` makes a self-signed loopback certificate with
``openssl``, starts ``node provider.mjs serve`` and waits for its ``READY
<issuer>`` line; ``stop()`` ends that process by its pid. ``rotate()`` adds a
signing key to the JWKS file and restarts on the same port, so the issuer
stays the same and old tokens keep (or, with ``drop_old``, lose) their key.

``approve_device(verification_uri_complete, login)`` fills the provider's own
pages the way a person would: confirm the user code, sign in (devInteractions'
form), consent. ``deny_device`` presses the page's abort button instead. A
real browser does the same in tests/agent/test_enroll_browser.py.

npm installs the provider into tests/oidc/node_modules (scripts/test does it;
``ensure_installed`` reports what is missing).
"""

from __future__ import annotations

import html.parser
import http.cookiejar
import json
import os
import select
import shutil
import signal
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "provider.mjs"
NODE_MODULES = HERE / "node_modules" / "oidc-provider"
START_TIMEOUT = 20.0


def missing() -> str | None:
    """Why the provider cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (scripts/test installs nodejs and npm)"
    if not NODE_MODULES.is_dir():
        return "oidc-provider is not installed: run `npm ci --prefix tests/oidc` (scripts/test does)"
    if shutil.which("openssl") is None:
        return "openssl is not installed"
    return None


def make_cert(workdir: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 (it is its own CA)."""
    cert, key = workdir / "oidc-cert.pem", workdir / "oidc-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
        check=True, capture_output=True, timeout=30)
    return cert, key


@dataclass
class Provider:
    workdir: Path
    issuer: str = ""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    cert: Path = field(init=False)
    key: Path = field(init=False)
    jwks: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = make_cert(self.workdir)
        self.jwks = self.workdir / "jwks.json"

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> Provider:
        log = open(self.workdir / "provider.log", "ab")  # noqa: SIM115 (kept by the child)
        self.proc = subprocess.Popen(
            ["node", str(SCRIPT), "serve", "--jwks", str(self.jwks), "--cert", str(self.cert),
             "--key", str(self.key), "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=log, cwd=HERE)
        log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"READY "):
            self.stop()
            text = (self.workdir / "provider.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"oidc-provider did not start: {line!r}\n{text}")
        self.issuer = line.split()[1].decode()
        self.port = int(self.issuer.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def rotate(self, *, drop_old: bool = False) -> str:
        """Prepend a new signing key and restart on the same port; returns its kid."""
        args = ["node", str(SCRIPT), "rotate", "--jwks", str(self.jwks)]
        out = subprocess.run(args + (["--drop-old"] if drop_old else []), check=True,
                             capture_output=True, timeout=30, cwd=HERE).stdout.decode()
        self.stop()
        self.start()
        return out.split()[1]

    def kids(self) -> list[str]:
        return [k["kid"] for k in json.loads(self.jwks.read_text())["keys"]]

    # -- acting as the user's browser ------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # as Python 3.13 does by default
        return ctx

    def _opener(self) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.ssl_context()),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def approve_device(self, verification_uri_complete: str, login: str) -> str:
        """Confirm the code, sign in as ``login``, consent; returns the last page's text."""
        return _walk(self._opener(), verification_uri_complete, login, abort=False)

    def deny_device(self, verification_uri_complete: str) -> str:
        return _walk(self._opener(), verification_uri_complete, "", abort=True)

    def device_token(self, login: str, client_id: str = "meshops") -> dict[str, object]:
        """A whole device grant done by hand: the token response for ``login``."""
        opener = self._opener()
        form = urllib.parse.urlencode({"client_id": client_id, "scope": "openid email"})
        auth = json.load(opener.open(f"{self.issuer}/device/auth", form.encode(), timeout=10))
        self.approve_device(str(auth["verification_uri_complete"]), login)
        form = urllib.parse.urlencode({
            "client_id": client_id, "device_code": auth["device_code"],
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code"})
        return json.load(opener.open(f"{self.issuer}/token", form.encode(), timeout=10))


class _Forms(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, object]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "inputs": []})
        elif tag in ("input", "button") and self.forms:
            self.forms[-1]["inputs"].append(a)  # type: ignore[union-attr]


def _walk(opener: urllib.request.OpenerDirector, url: str, login: str, *, abort: bool) -> str:
    data: bytes | None = None
    aborted = False
    for _ in range(8):
        with opener.open(url, data, timeout=10) as resp:
            page, here = resp.read().decode(), resp.url
        parser = _Forms()
        parser.feed(page)
        if not parser.forms or aborted:
            return page
        form = parser.forms[0]
        fields: dict[str, str] = {}
        for inp in form["inputs"]:  # type: ignore[union-attr]
            name, kind = inp.get("name", ""), inp.get("type", "text")
            if not name:
                continue
            if name == "abort":
                if abort:
                    fields[name] = inp.get("value", "")
                continue
            if name == "login":
                fields[name] = login
            elif name == "password":
                fields[name] = "any password"
            elif kind != "submit":
                fields[name] = inp.get("value", "")
        if abort and "abort" in fields:
            fields.pop("confirm", None)
            aborted = True
        url, data = urllib.parse.urljoin(here, str(form["action"])), urllib.parse.urlencode(
            fields).encode()
    raise RuntimeError(f"the provider's pages did not finish after 8 steps (at {url})")
