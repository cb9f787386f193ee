"""Is a WireGuard key rotation due? ``decide_rotation(facts, now) -> Due``, pure.

Called by ``agent.autorotate`` (after a pass of ``agent run`` and of ``agent
apply``), which reads the facts, carries out the answer (``agent.rotate``, as
``meshops agent rotate-key`` does) and records what happened. Nothing here
reads a file or the clock: ``now`` and every fact are given.

How old is the key? ``created_at`` of the current key: the time the agent
recorded when it made that key (``key-rotation.json`` in the state dir maps
public keys to the time they were made), else the key file's mtime (``agent
init`` and ``enroll`` write it once; the pass renames ``wireguard.key.next``
over it, which keeps the new key's mtime, i.e. its creation time). The age
counts from when the key was made, not from when the manifest first carried
it: the difference is the time the commit takes to land.

The rules, in order:

1. no ``key_rotation_days``: nothing (rotation is by hand);
2. a rotation is pending (``wireguard.key.next`` exists, made by the agent or
   by ``rotate-key``): send it again (``--resend``) only after a backoff from
   the last attempt: ``RESEND_COMMITTED`` after the hub committed it (the
   manifest has not carried it yet: the hub has not published it, or the
   commit awaits a merge), ``RETRY_FIRST`` after a refusal or an unreachable
   hub, doubling per attempt up to ``RETRY_MAX``; never every pass;
3. the clock is before the key's creation time: nothing, with a warning (a
   clock that jumped back must not start a rotation, nor hide one forever:
   the next pass on a sane clock decides again);
4. the key is younger than ``key_rotation_days``: nothing until then;
5. a start the hub refused (the key it was for is gone) backs off as in 2;
6. otherwise: start a rotation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

DAY = 86400.0
RETRY_FIRST = 300.0  # after a refusal or an unreachable hub
RESEND_COMMITTED = 3600.0  # the hub committed the key; the manifest does not carry it yet
RETRY_MAX = 6 * 3600.0

Action = Literal["none", "start", "resend"]
Outcome = Literal["committed", "refused", "unreachable"]


@dataclass(frozen=True)
class Attempt:
    """The last request the agent sent for a rotation, from ``key-rotation.json``."""

    public_key: str  # the new key it asked for
    at: float
    outcome: Outcome
    count: int = 1  # attempts for this key so far


@dataclass(frozen=True)
class KeyFacts:
    """Everything the decision needs, read by ``agent.autorotate.read_facts``."""

    days: int | None  # AgentConfig.key_rotation_days
    current: str  # public key of wireguard.key
    current_mtime: float
    pending: str | None = None  # public key of wireguard.key.next, when it exists
    pending_mtime: float | None = None
    created: Mapping[str, float] = field(default_factory=dict)  # public key -> made at
    attempt: Attempt | None = None


@dataclass(frozen=True)
class Due:
    action: Action
    reason: str  # one line, public keys only
    key_created_at: float | None = None
    check_at: float | None = None  # when the answer can change (None: it cannot by time)
    warning: str | None = None


def backoff(attempt: Attempt) -> float:
    first = RESEND_COMMITTED if attempt.outcome == "committed" else RETRY_FIRST
    return min(first * 2 ** max(attempt.count - 1, 0), RETRY_MAX)


def key_created_at(facts: KeyFacts) -> float:
    return facts.created.get(facts.current, facts.current_mtime)


def decide_rotation(facts: KeyFacts, now: float) -> Due:
    if not facts.days:
        return Due("none", "key_rotation_days is not set")
    created = key_created_at(facts)
    if facts.pending is not None:
        return _pending(facts, now, created)
    if now < created:
        return Due("none", "the clock is before the key's creation time", created, created,
                   warning=f"the clock reads {now:.0f}, before the WireGuard key was made "
                   f"({created:.0f}): not rotating until the clock is right")
    due_at = created + facts.days * DAY
    if now < due_at:
        return Due("none", f"the key is {(now - created) / DAY:.1f} of {facts.days} days old",
                   created, due_at)
    attempt = facts.attempt
    if attempt is not None and attempt.outcome != "committed" \
            and attempt.public_key != facts.current and now >= attempt.at:
        retry_at = attempt.at + backoff(attempt)
        if now < retry_at:
            return Due("none", f"the hub answered {attempt.outcome} at {attempt.at:.0f}; "
                       f"next try at {retry_at:.0f}", created, retry_at)
    return Due("start", f"the key is {(now - created) / DAY:.1f} days old (rotate after "
               f"{facts.days})", created)


def _pending(facts: KeyFacts, now: float, created: float) -> Due:
    attempt = facts.attempt
    if attempt is not None and attempt.public_key == facts.pending:
        since, wait = attempt.at, backoff(attempt)
        what = f"the hub answered {attempt.outcome}"
    else:  # made by `rotate-key` by hand (or the record is lost): it was sent once
        since = facts.pending_mtime if facts.pending_mtime is not None else now
        wait, what = RESEND_COMMITTED, "made by hand"
    if now < since:  # a clock that jumped back: wait for it rather than resend at once
        return Due("none", f"a rotation to {facts.pending} is pending", created, since)
    if now < since + wait:
        return Due("none", f"a rotation to {facts.pending} is pending ({what}); sent again "
                   f"at {since + wait:.0f} unless the manifest carries it first", created,
                   since + wait)
    return Due("resend", f"a rotation to {facts.pending} is pending ({what}) and the "
               "manifest does not carry it yet", created)
