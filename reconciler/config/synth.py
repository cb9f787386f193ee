"""Synthetic org repositories of any size, for benchmarks and tests.

Used by ``scripts/benchmarks/bench_validate.py``, the publish benchmarks and
tests. ``make_repo(path, devices=1000)`` writes a valid repository: devices
spread over ``orgs`` orgs, one user per ten devices, tags, a relay per org, and
a policy with ``rules`` port rules, groups and passing tests. Keys are
deterministic (SHA-256 of a label, 32 bytes, base64), so two runs write
identical files. ``git=True`` also makes it a git repository with one commit
(through the ``git`` command line).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import subprocess
from pathlib import Path

HUB = "https://hub.example.com:8443"


def fake_key(label: str) -> str:
    """A deterministic 32-byte key in standard base64 (valid, never all zeros)."""
    return base64.b64encode(hashlib.sha256(label.encode()).digest()).decode()


def device_yaml(org: str, index: int, owner: str, v4: str, v6: str,
                tags: list[str], relay: bool = False) -> str:
    lines = [
        "kind: Device",
        f"name: dev-{index:05d}",
        f"owner: {owner}",
        f"description: synthetic device {index}",
        "wireguard:",
        f"  public_key: {fake_key(f'{org}/wg/{index}')}",
        "identity:",
        f"  public_key: {fake_key(f'{org}/id/{index}')}",
        "tunnel_ips:",
        f"  - {v4}",
        f"  - {v6}",
        f"tags: [{', '.join(tags)}]",
    ]
    if relay:
        lines += ["relay: true", f"endpoint: 203.0.113.{10 + index % 200}:51820"]
    return "\n".join(lines) + "\n"


def _tags(i: int) -> list[str]:
    return [f"team-{i % 5}", f"svc-{i % 4}"]


def policy_yaml(rules: int, tests: bool = True) -> str:
    lines = ["kind: Policy", "groups:", "  admins:", "    users: [user-0000]",
             "  servers:", "    tags: [svc-0, svc-1]", "rules:",
             "  - name: admins-ssh", "    src: [group:admins]", "    dst: ['*']",
             "    proto: tcp", "    ports: [22]"]
    for i in range(rules):
        lines += [f"  - name: rule-{i}", f"    src: [tag:team-{i % 5}]",
                  f"    dst: [tag:svc-{i % 4}]", f"    proto: {'udp' if i % 3 == 2 else 'tcp'}",
                  f"    ports: [{1000 + i}, \"{20000 + 10 * i}-{20000 + 10 * i + 9}\"]"]
    if tests:
        # dev-00000 (team-0, svc-0, owner user-0000) and dev-00001 (team-1, svc-1)
        lines += ["tests:",
                  "  - {src: dev-00000, dst: dev-00001, proto: udp, port: 1005, expect: accept}",
                  "  - {src: dev-00000, dst: dev-00001, proto: tcp, port: 9, expect: deny}",
                  "  - {src: dev-00000, dst: dev-00002, proto: tcp, port: 22, expect: accept}",
                  "  - {src: dev-00001, dst: dev-00000, proto: tcp, port: 22, expect: deny}",
                  "  - {src: dev-00001, dst: dev-00000, proto: icmp, expect: deny}",
                  "  - {src: dev-00000, dst: dev-00001, proto: udp, port: 20055, expect: accept}"]
    return "\n".join(lines) + "\n"


def make_repo(path: str | os.PathLike[str], devices: int, orgs: int = 1, rules: int = 20,
              git: bool = False) -> Path:
    """Write a valid synthetic repository with ``devices`` devices in total."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    (root / "mesh.yaml").write_text(
        f"kind: Mesh\nhub_url: {HUB}\nstun_servers: ['203.0.113.1:3478', '203.0.113.2:3478']\n"
        "cert_lifetime_days: 30\nmanifest_lifetime_days: 7\n")
    per_org = [devices // orgs + (1 if k < devices % orgs else 0) for k in range(orgs)]
    for k, count in enumerate(per_org):
        org = f"org-{k:02d}"
        base = root / "orgs" / org
        (base / "users").mkdir(parents=True, exist_ok=True)
        (base / "devices").mkdir(parents=True, exist_ok=True)
        v4 = ipaddress.IPv4Network(f"10.{k % 256}.0.0/16" if count < 65000
                                   else f"10.{k % 256}.0.0/8")
        v6 = ipaddress.IPv6Network(f"fd00:{k:x}::/64")
        (base / "organization.yaml").write_text(
            f"kind: Organization\nname: {org}\ncidr_v4: {v4}\ncidr_v6: {v6}\n"
            "owners: [user-0000]\ndefaults:\n  listen_port: 51820\n  keepalive: 25\n")
        users = max(1, (count + 9) // 10)
        for u in range(users):
            role = "owner" if u == 0 else "member"
            (base / "users" / f"user-{u:04d}.yaml").write_text(
                f"kind: User\nname: user-{u:04d}\nemail: user-{u:04d}@{org}.example.com\n"
                f"oidc:\n  issuer: https://accounts.example.com\n  subject: '{org}-{u}'\n"
                f"role: {role}\n")
        for i in range(count):
            text = device_yaml(org, i, f"user-{i % users:04d}", str(v4[i + 1]), str(v6[i + 1]),
                               _tags(i), relay=(i == count - 1 and count > 3))
            (base / "devices" / f"dev-{i:05d}.yaml").write_text(text)
        if users >= 2:  # the tests need two owners
            (base / "policy.yaml").write_text(policy_yaml(rules))
    if git:
        git_init_commit(root, "synthetic repository")
    return root


def git_init_commit(root: Path, message: str) -> str:
    """``git init`` (if needed), add everything, commit; returns the commit id."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "meshops", "GIT_AUTHOR_EMAIL": "synth@example.com",
           "GIT_COMMITTER_NAME": "meshops", "GIT_COMMITTER_EMAIL": "synth@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    if not (root / ".git").exists():
        subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "commit", "-q", "--no-gpg-sign", "-m", message],
                   check=True, env=env)
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True, env=env,
                         capture_output=True, text=True)
    return out.stdout.strip()
