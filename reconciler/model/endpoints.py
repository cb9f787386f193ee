"""The live endpoint feed: what agents report and the hub serves.

Agents POST an ``EndpointReport``; the hub stores it (``reconciler.hub.store``),
merges reflected observations, and serves a signed ``EndpointFeed``.
"""

from __future__ import annotations

from reconciler.structs import Record

CANDIDATE_KINDS = ("stun", "local", "static", "reflected", "observed")
# The report limits both sides agree on: agents send at most this many, the hub
# refuses more (its body limit is derived from them).
MAX_CANDIDATES = 32
MAX_OBSERVATIONS = 1024
MAPPINGS = ("independent", "dependent", "unknown")


class Candidate(Record):
    kind: str  # one of CANDIDATE_KINDS
    address: str  # "ip:port"


class EndpointReport(Record):
    org: str
    device: str
    candidates: tuple[Candidate, ...]
    mapping: str = "unknown"  # NAT mapping behaviour: independent | dependent | unknown
    listen_port: int = 0
    serial: int = 0  # manifest serial the agent has applied
    observed_addr: str | None = None  # filled in by the hub: source address of the request
    reported_at: int = 0  # unix seconds, set by the hub
    cert_serial: int = 0  # filled in by the hub: the serial of the certificate that sent it


class FeedEntry(Record):
    device: str
    candidates: tuple[Candidate, ...]
    mapping: str
    public_ip: str | None
    updated_at: int  # when this entry's content last changed (not when it was last confirmed)


class EndpointFeed(Record):
    org: str
    revision: int  # monotonic, moves only when the entries change; long-poll with ?since=REV
    generated_at: int  # when this revision was first built
    entries: tuple[FeedEntry, ...]
