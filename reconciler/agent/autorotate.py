"""``key_rotation_days``: rotate the WireGuard key by itself, after a pass.

Called by ``agent.loop`` (after each good pass of ``agent run``) and by the CLI's
``agent apply`` (after its pass, never on ``--dry-run``). ``rotate_if_due``:

1. reads the facts once (``read_facts``): the public keys of ``wireguard.key``
   and ``wireguard.key.next`` and their mtimes, and ``key-rotation.json`` in the
   state dir (when each key was made, the last request and its answer);
2. asks the pure ``agent.keyage.decide_rotation`` (``now`` given);
3. carries out its answer with ``agent.rotate.rotate_key`` exactly as ``meshops
   agent rotate-key`` (``resend=True`` for a pending key) does, and records the
   outcome, so a refused or not-yet-merged rotation backs off instead of
   starting again every pass.

The switch to the new key is the pass's (``agent.gather.choose_private_key``,
``agent.commit``), once the manifest carries it. Errors of the request are
outcomes, not exceptions: the hub's refusal (``ConfigError``) and an
unreachable hub (``FetchError``) come back as ``Rotation.error`` and the pass's
result stands. The private keys are never read here but to derive public keys.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.agent.config import AgentConfig, read_private_key
from reconciler.agent.fetch import FetchLike
from reconciler.agent.keyage import Attempt, Due, KeyFacts, Outcome, decide_rotation
from reconciler.agent.rotate import next_key_path, rotate_key
from reconciler.boundedjson import loads as bounded_loads
from reconciler.converge import public_key
from reconciler.errors import ConfigError, FetchError, InputRefused, UsageError
from reconciler.fsio import atomic_write

RECORD = "key-rotation.json"
VERSION = 1
MAX_RECORD_BYTES = 64 * 1024
REFUSED = "(refused, removed)"  # stands for a new key the hub refused (rotate_key deleted it)


@dataclass(frozen=True)
class Rotation:
    """What ``rotate_if_due`` did: ``due.action`` "none" means nothing was sent."""

    due: Due
    new_public_key: str | None = None
    commit: str | None = None
    error: str | None = None  # the hub's refusal or why it was unreachable

    def message(self) -> str | None:
        """One line for the log, or None when nothing happened; public keys only."""
        if self.due.action == "none":
            return None
        verb = "sent again" if self.due.action == "resend" else "started"
        if self.error is not None:
            return f"key rotation {verb} ({self.due.reason}): {self.error}"
        return (f"key rotation {verb} ({self.due.reason}): new public key "
                f"{self.new_public_key}, committed as {(self.commit or '')[:12]}; the agent "
                "switches once the manifest carries it")


def rotate_if_due(config: AgentConfig, *, fetch: FetchLike, now: float) -> Rotation:
    facts = read_facts(config)
    due = decide_rotation(facts, now)
    if due.action == "none":
        return Rotation(due)
    resend = due.action == "resend"
    created = dict(facts.created)
    created.setdefault(facts.current, facts.current_mtime)
    try:
        done = rotate_key(config, fetch=fetch, now=lambda: now, resend=resend)
    except (ConfigError, FetchError, UsageError) as exc:
        outcome: Outcome = "unreachable" if isinstance(exc, FetchError) else "refused"
        pending = facts.pending if resend else _public_or_none(next_key_path(
            config.private_key))
        # a refused new key is deleted by rotate_key; its public half is not known then
        asked = pending or REFUSED
        if pending is not None:
            created.setdefault(pending, now)
        write_record(config, _keep(created, facts.current, pending),
                     _next_attempt(facts.attempt, asked, now, outcome))
        return Rotation(due, new_public_key=pending, error=str(exc))
    created.setdefault(done.new_public_key, now)
    write_record(config, _keep(created, facts.current, done.new_public_key),
                 _next_attempt(facts.attempt, done.new_public_key, now, "committed"))
    return Rotation(due, new_public_key=done.new_public_key, commit=done.commit)


def read_facts(config: AgentConfig) -> KeyFacts:
    """The keys' public halves and mtimes, and the record (absent if unreadable)."""
    current = public_key(read_private_key(config.private_key))
    current_mtime = os.stat(config.private_key).st_mtime
    pending_path = next_key_path(config.private_key)
    pending = pending_mtime = None
    if os.path.exists(pending_path):
        pending = public_key(read_private_key(pending_path))
        pending_mtime = os.stat(pending_path).st_mtime
    created, attempt = read_record(config)
    return KeyFacts(days=config.key_rotation_days, current=current,
                    current_mtime=current_mtime, pending=pending, pending_mtime=pending_mtime,
                    created=created, attempt=attempt)


def read_record(config: AgentConfig) -> tuple[dict[str, float], Attempt | None]:
    """``key-rotation.json``: ({public key: made at}, the last attempt). Anything
    unreadable counts as absent: the key file's mtime then dates the key."""
    path = config.state_path(RECORD)
    try:
        raw = path.read_bytes()
        doc = bounded_loads(raw, what=str(path), max_bytes=MAX_RECORD_BYTES, max_depth=4)
    except (OSError, InputRefused):
        return {}, None
    return parse_record(doc)


def parse_record(doc: Any) -> tuple[dict[str, float], Attempt | None]:
    if not isinstance(doc, Mapping):
        return {}, None
    created_raw = doc.get("created")
    created = {str(k): float(v) for k, v in created_raw.items()
               if _is_number(v)} if isinstance(created_raw, Mapping) else {}
    raw = doc.get("attempt")
    attempt = None
    if isinstance(raw, Mapping) and isinstance(raw.get("public_key"), str) \
            and _is_number(raw.get("at")) and raw.get("outcome") in (
                "committed", "refused", "unreachable") \
            and isinstance(raw.get("count"), int) and raw["count"] > 0:
        attempt = Attempt(raw["public_key"], float(raw["at"]), raw["outcome"], raw["count"])
    return created, attempt


def write_record(config: AgentConfig, created: Mapping[str, float],
                 attempt: Attempt | None) -> None:
    doc: dict[str, Any] = {"version": VERSION, "created": dict(sorted(created.items()))}
    if attempt is not None:
        doc["attempt"] = {"public_key": attempt.public_key, "at": attempt.at,
                          "outcome": attempt.outcome, "count": attempt.count}
    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    atomic_write(config.state_path(RECORD),
                 (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)


def _next_attempt(last: Attempt | None, public: str, now: float, outcome: Outcome) -> Attempt:
    """Attempts for the same key count up (refused starts share the name REFUSED)."""
    count = last.count + 1 if last is not None and last.public_key == public else 1
    return Attempt(public, now, outcome, count)


def _keep(created: Mapping[str, float], *keys: str | None) -> dict[str, float]:
    """Only the keys still on the device: the record never grows."""
    return {k: v for k, v in created.items() if k in keys}


def _public_or_none(path: str) -> str | None:
    try:
        return public_key(read_private_key(path)) if os.path.exists(path) else None
    except ConfigError:
        return None


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) \
        and math.isfinite(value)
