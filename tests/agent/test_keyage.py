"""``agent.keyage.decide_rotation``: when ``key_rotation_days`` starts a rotation
(pure: every fact and ``now`` are given), and ``agent.autorotate`` carrying the
answer out against a fake hub (what it records, how it backs off)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.agent.autorotate import RECORD, REFUSED, read_facts, rotate_if_due
from reconciler.agent.config import config_from_dict
from reconciler.agent.keyage import (
    DAY,
    RESEND_COMMITTED,
    RETRY_FIRST,
    RETRY_MAX,
    Attempt,
    KeyFacts,
    decide_rotation,
)
from reconciler.agent.rotate import next_key_path
from reconciler.converge.keys import public_key
from reconciler.errors import ConfigError, FetchError

from .test_rotate import FakeFetch, agent_config

T0 = 1_750_000_000.0  # the current key was made then
CUR, NEW = "C" * 43 + "=", "N" * 43 + "="


def facts(**kw: object) -> KeyFacts:
    base: dict[str, object] = {"days": 30, "current": CUR, "current_mtime": T0}
    base.update(kw)
    return KeyFacts(**base)  # type: ignore[arg-type]


def test_disabled_never_rotates():
    for days in (None, 0):
        due = decide_rotation(facts(days=days), T0 + 1000 * DAY)
        assert due.action == "none" and "not set" in due.reason


def test_not_due_says_when_it_will_be():
    due = decide_rotation(facts(), T0 + 29.5 * DAY)
    assert due.action == "none" and due.check_at == T0 + 30 * DAY
    assert "29.5 of 30 days" in due.reason


def test_due_starts_a_rotation_exactly_at_the_age():
    assert decide_rotation(facts(), T0 + 30 * DAY - 1).action == "none"
    due = decide_rotation(facts(), T0 + 30 * DAY)
    assert due.action == "start" and due.key_created_at == T0


def test_the_recorded_creation_time_wins_over_the_mtime():
    # a restored backup gave the key file a new mtime; the record still knows its age
    recorded = facts(current_mtime=T0 + 40 * DAY, created={CUR: T0})
    assert decide_rotation(recorded, T0 + 31 * DAY).action == "start"
    # a record for another key (the one before) does not date this one
    other = facts(current_mtime=T0 + 20 * DAY, created={NEW: T0})
    assert decide_rotation(other, T0 + 31 * DAY).action == "none"


def test_a_clock_before_the_key_time_warns_and_does_not_rotate():
    due = decide_rotation(facts(), T0 - 3600)
    assert due.action == "none" and due.warning and "before the WireGuard key was made" in \
        due.warning


def test_a_pending_rotation_is_not_started_again_every_pass():
    committed = Attempt(NEW, T0 + 30 * DAY, "committed")
    pending = facts(pending=NEW, pending_mtime=T0 + 30 * DAY, attempt=committed)
    for later in (1.0, 60.0, RESEND_COMMITTED - 1):
        assert decide_rotation(pending, committed.at + later).action == "none"
    assert decide_rotation(pending, committed.at + RESEND_COMMITTED).action == "resend"
    # each attempt doubles the wait, up to RETRY_MAX
    third = facts(pending=NEW, pending_mtime=T0, attempt=Attempt(NEW, T0, "committed", 3))
    assert decide_rotation(third, T0 + 4 * RESEND_COMMITTED - 1).action == "none"
    assert decide_rotation(third, T0 + 4 * RESEND_COMMITTED).action == "resend"
    many = facts(pending=NEW, pending_mtime=T0, attempt=Attempt(NEW, T0, "unreachable", 20))
    assert decide_rotation(many, T0 + RETRY_MAX).action == "resend"


def test_an_unreachable_hub_is_retried_sooner_than_a_committed_rotation():
    sent = facts(pending=NEW, pending_mtime=T0, attempt=Attempt(NEW, T0, "unreachable"))
    assert decide_rotation(sent, T0 + RETRY_FIRST - 1).action == "none"
    assert decide_rotation(sent, T0 + RETRY_FIRST).action == "resend"


def test_a_key_pending_from_rotate_key_by_hand_waits_from_its_mtime():
    by_hand = facts(pending=NEW, pending_mtime=T0 + 40 * DAY)
    assert decide_rotation(by_hand, T0 + 40 * DAY + 10).action == "none"
    assert decide_rotation(by_hand, T0 + 40 * DAY + RESEND_COMMITTED).action == "resend"
    # a clock before the pending key's mtime waits
    assert decide_rotation(by_hand, T0 + 39 * DAY).action == "none"


def test_a_refused_start_backs_off_then_tries_again():
    refused = facts(attempt=Attempt(REFUSED, T0 + 30 * DAY, "refused", 2))
    at = T0 + 30 * DAY
    due = decide_rotation(refused, at + 2 * RETRY_FIRST - 1)
    assert due.action == "none" and "refused" in due.reason
    assert decide_rotation(refused, at + 2 * RETRY_FIRST).action == "start"


def test_the_attempt_that_made_the_current_key_is_history():
    # after the switch, the last attempt names the current key: it does not hold back
    done = facts(attempt=Attempt(CUR, T0, "committed"), created={CUR: T0})
    assert decide_rotation(done, T0 + 30 * DAY).action == "start"


# -- the config ---------------------------------------------------------------------


def _raw(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"org": "acme", "name": "web-1", "trust": "/t.json",
                               "private_key": "/k", "identity_key": "/i",
                               "hub": "https://hub:8443"}
    base.update(kw)
    return base


def test_the_config_takes_whole_days_and_needs_a_hub():
    assert config_from_dict(_raw(key_rotation_days=90)).key_rotation_days == 90
    assert config_from_dict(_raw()).key_rotation_days is None
    for bad, words in ((0, "1-3650"), (3651, "1-3650"), ("30", "without quotes"),
                       (1.5, "whole number"), (True, "whole number")):
        with pytest.raises(ConfigError, match="key_rotation_days") as exc:
            config_from_dict(_raw(key_rotation_days=bad), where="agent.json")
        assert words in str(exc.value)
    static = _raw(hub=None, manifest_url="file:///m.json", key_rotation_days=30)
    with pytest.raises(ConfigError, match="key_rotation_days: needs a hub"):
        config_from_dict({k: v for k, v in static.items() if v is not None})


# -- carrying it out (agent.autorotate) -----------------------------------------------


def _old(tmp: Path, days: int = 30):
    config = agent_config(tmp, "https://hub.example:8443")
    from reconciler.structs import replace

    config = replace(config, key_rotation_days=days)
    os.utime(config.private_key, (T0, T0))
    return config


def test_autorotate_starts_records_and_then_waits(tmp_path):
    config = _old(tmp_path)
    fetch = FakeFetch()
    now = T0 + 31 * DAY
    rotation = rotate_if_due(config, fetch=fetch, now=now)
    assert rotation.due.action == "start" and rotation.error is None
    new = public_key(Path(next_key_path(config.private_key)).read_text().strip())
    assert rotation.new_public_key == new and len(fetch.posts) == 1
    assert new in (rotation.message() or "")
    record = json.loads(config.state_path(RECORD).read_text())
    current = read_facts(config).current
    assert record["created"] == {current: T0, new: now}
    assert record["attempt"] == {"public_key": new, "at": now, "outcome": "committed",
                                 "count": 1}
    # the next passes: pending, nothing sent
    for later in (30.0, 600.0):
        assert rotate_if_due(config, fetch=fetch, now=now + later).due.action == "none"
    assert len(fetch.posts) == 1
    # after the backoff it is sent again (the same key), and the wait doubles
    again = rotate_if_due(config, fetch=fetch, now=now + RESEND_COMMITTED)
    assert again.due.action == "resend" and again.new_public_key == new
    assert len(fetch.posts) == 2
    assert json.loads(config.state_path(RECORD).read_text())["attempt"]["count"] == 2
    # the pass switched keys (agent.commit renames .next over the key): not due any more
    os.replace(next_key_path(config.private_key), config.private_key)
    os.utime(config.private_key, (now + 5 * DAY, now + 5 * DAY))  # a copy changed the mtime
    settled = rotate_if_due(config, fetch=fetch, now=now + 2 * DAY)
    assert settled.due.action == "none" and settled.due.key_created_at == now
    assert rotate_if_due(config, fetch=fetch, now=now + 30 * DAY).due.action == "start"


def test_autorotate_a_refusal_removes_the_key_and_backs_off(tmp_path):
    config = _old(tmp_path)
    fetch = FakeFetch(error=ConfigError("hub: 403 device-disabled"))
    now = T0 + 31 * DAY
    rotation = rotate_if_due(config, fetch=fetch, now=now)
    assert rotation.error and "device-disabled" in rotation.error
    assert "device-disabled" in (rotation.message() or "")
    assert not os.path.exists(next_key_path(config.private_key))
    assert rotate_if_due(config, fetch=fetch, now=now + 60).due.action == "none"
    assert len(fetch.posts) == 1
    assert rotate_if_due(config, fetch=fetch, now=now + RETRY_FIRST).due.action == "start"
    assert len(fetch.posts) == 2
    record = json.loads(config.state_path(RECORD).read_text())
    assert record["attempt"]["count"] == 2 and record["attempt"]["outcome"] == "refused"


def test_autorotate_an_unreachable_hub_keeps_the_key_and_resends_it(tmp_path):
    config = _old(tmp_path)
    fetch = FakeFetch(error=FetchError("hub: connection refused"))
    now = T0 + 31 * DAY
    first = rotate_if_due(config, fetch=fetch, now=now)
    pending = Path(next_key_path(config.private_key)).read_text()
    assert first.error and first.new_public_key == public_key(pending.strip())
    assert rotate_if_due(config, fetch=fetch, now=now + RETRY_FIRST - 1).due.action == "none"
    fetch.error = None
    again = rotate_if_due(config, fetch=fetch, now=now + RETRY_FIRST)
    assert again.due.action == "resend" and again.error is None
    assert Path(next_key_path(config.private_key)).read_text() == pending  # the same key
    private = pending.strip()
    assert all(private not in json.dumps(obj) for _, obj in fetch.posts)
    assert private not in config.state_path(RECORD).read_text()


def test_a_corrupt_record_counts_as_absent(tmp_path):
    config = _old(tmp_path)
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    config.state_path(RECORD).write_text("{not json")
    facts_read = read_facts(config)
    assert facts_read.created == {} and facts_read.attempt is None
    assert facts_read.current_mtime == T0
