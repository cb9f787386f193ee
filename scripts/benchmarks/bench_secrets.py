"""SOPS benchmarks: decrypt/encrypt a small key file and a 1,000-value file.

``scripts/bench secrets_decrypt_small secrets_decrypt_1000 secrets_encrypt_1000``.
A throwaway GNUPGHOME with a fresh ed25519/cv25519 key (no passphrase) is made
and its gpg-agent killed afterwards. The small file is what ``hub publish``
decrypts per org (a CA key and a signing key): its cost is mostly one gpg run.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime

from reconciler.secrets import sops
from reconciler.secrets.gpg import Gpg

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _with_key(fn):  # type: ignore[no-untyped-def]
    home = tempfile.mkdtemp(prefix="meshops-bench-gpg-")
    try:
        subprocess.run(["gpg", "--homedir", home, "--batch", "--passphrase", "", "--quick-gen-key",
                        "meshops bench <bench@example.invalid>", "future-default", "default",
                        "never"], check=True, capture_output=True)
        gpg = Gpg(home)
        fingerprint = next(iter(gpg._gpg.list_keys(secret=True)))["fingerprint"]
        return fn(gpg, fingerprint)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"],
                       check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _big_doc() -> dict[str, object]:
    return {f"device-{i}": {"key": f"secret-{i}" * 3, "port": 51820 + i, "on": i % 2 == 0,
                            "ratio": i / 7} for i in range(250)}


def _median(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def decrypt_small() -> dict:
    def run(gpg: Gpg, fp: str) -> dict:
        doc = {"key_pem": "-----BEGIN PRIVATE KEY-----\n" + "A" * 160 + "\n", "kid": "abc"}
        text = sops.encrypt(doc, [fp], gpg=gpg, now=NOW)
        value = _median(lambda: sops.decrypt(text, gpg=gpg), 10)
        return {"value": value, "unit": "s", "goal": None, "bytes": len(text)}
    return _with_key(run)


def decrypt_1000() -> dict:
    def run(gpg: Gpg, fp: str) -> dict:
        text = sops.encrypt(_big_doc(), [fp], gpg=gpg, now=NOW)
        value = _median(lambda: sops.decrypt(text, gpg=gpg), 5)
        return {"value": value, "unit": "s", "goal": None, "values": 1000, "bytes": len(text)}
    return _with_key(run)


def encrypt_1000() -> dict:
    def run(gpg: Gpg, fp: str) -> dict:
        doc = _big_doc()
        value = _median(lambda: sops.encrypt(doc, [fp], gpg=gpg, now=NOW), 5)
        return {"value": value, "unit": "s", "goal": None, "values": 1000}
    return _with_key(run)


BENCHMARKS = {
    "secrets_decrypt_small": decrypt_small,
    "secrets_decrypt_1000": decrypt_1000,
    "secrets_encrypt_1000": encrypt_1000,
}
