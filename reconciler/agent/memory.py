"""What the agent remembers between passes about its peers: one typed value.

``Memory`` is read by ``agent.gather`` (``Memory.decode`` of
``peering.json``'s bytes; ``Memory.parse`` of the dict when that fails),
advanced by the pure ``agent.decide`` (through ``agent.paths``), and written
once by ``agent.commit`` (``Memory.to_dict``). Nothing else reads or writes its parts. It holds:

* ``peering``: the direct/relay hysteresis and relay health
  (``agent.peering.PeeringState``);
* ``heard``: per peer, its rx counter and when it last grew (``Heard``):
  liveness between handshakes, kept so one-shot runs see progress too;
* ``situations``: per peer, what its path rested on last pass (both public
  IPs and NAT mappings); a change is a move;
* ``changed_at``: per peer, when its situation changed and it has not been
  heard from since (its endpoint is re-pointed until then).

The file format is version 1 of ``peering.json`` (the same keys the agent
wrote before memory was typed), so existing state dirs keep their memory.
Anything unreadable counts as empty: memory is only a cache of observations.
Pure: no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from reconciler.agent.peering import PathState, PeeringState, RelayState
from reconciler.structs import Record, field, json_decoder

VERSION = 1
Situation = tuple[str | None, str, str | None, str]  # my ip, my mapping, peer ip, peer mapping


class Heard(Record, array_like=True):  # [rx_bytes, at] in peering.json
    rx_bytes: int
    at: float  # unix seconds the peer was last heard from


class Memory(Record):
    peering: PeeringState = field(default_factory=PeeringState)
    heard: Mapping[str, Heard] = field(default_factory=dict)
    situations: Mapping[str, Situation] = field(default_factory=dict)
    changed_at: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": VERSION,
            # explicit dicts: dataclasses.asdict deep-copies, 0.3 s at 10,000 peers
            "paths": {k: {"mode": v.mode, "since": v.since, "failures": v.failures,
                          "retry_at": v.retry_at}
                      for k, v in sorted(self.peering.paths.items())},
            "relays": {k: {"since": v.since, "failures": v.failures,
                           "down_until": v.down_until}
                       for k, v in sorted(self.peering.relays.items())},
            "liveness": {k: [h.rx_bytes, h.at] for k, h in sorted(self.heard.items())},
            "situation": {k: list(s) for k, s in sorted(self.situations.items())},
        }
        if self.changed_at:
            doc["changed_at"] = dict(sorted(self.changed_at.items()))
        return doc

    @classmethod
    def decode(cls, data: bytes) -> Memory | None:
        """``peering.json``'s bytes as a ``Memory``, read and type-checked in one
        C pass (``structs.json_decoder``: ~10 ms for 10,000 peers, where
        ``json_loads`` and ``parse`` take ~50); None when anything does not fit.
        ``agent.gather`` then asks ``parse`` why (it names the problem)."""
        try:
            doc = _read_file(data)
        except ValueError:
            return None
        return cls(PeeringState(doc.paths, doc.relays), doc.liveness, doc.situation,
                   doc.changed_at)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> Memory:
        """Parse ``peering.json``; anything malformed starts empty."""
        return cls.parse(doc) or cls()

    @classmethod
    def parse(cls, doc: Any) -> Memory | None:
        """``peering.json`` as a ``Memory``, or None when anything in it is malformed."""
        if not isinstance(doc, Mapping):
            return None
        try:  # every field checked here (10,000 peers a pass)
            paths = {str(k): PathState(str(v["mode"]), _num(v["since"]), int(v["failures"]),
                                       _num(v["retry_at"]))
                     for k, v in doc.get("paths", {}).items()}
            relays = {str(k): RelayState(_num(v["since"]), int(v["failures"]),
                                         _num(v["down_until"]))
                      for k, v in doc.get("relays", {}).items()}
            heard = {str(k): Heard(int(v[0]), _num(v[1]))
                     for k, v in doc.get("liveness", {}).items()}
            situations = {str(k): _situation(v) for k, v in doc.get("situation", {}).items()}
            changed = {str(k): _num(v) for k, v in doc.get("changed_at", {}).items()}
        except (TypeError, KeyError, ValueError, AttributeError, IndexError):
            return None
        return cls(PeeringState(paths, relays), heard, situations, changed)


def _num(value: Any) -> float:
    kind = type(value)  # JSON gives exactly int or float (bool is its own type)
    if (kind is float and math.isfinite(value)) or kind is int:
        return float(value)
    raise ValueError(f"not a finite number: {value!r}")


def _situation(value: Any) -> Situation:
    my_ip, my_map, peer_ip, peer_map = value
    if not ((my_ip is None or type(my_ip) is str) and (peer_ip is None or type(peer_ip) is str)):
        raise ValueError("public ip must be a string or null")
    return (my_ip, str(my_map), peer_ip, str(peer_map))


class _File(Record):
    """``peering.json`` version 1 as ``Memory.decode`` reads it (other keys are
    skipped; ``version`` is written for readers to come)."""

    paths: dict[str, PathState] = field(default_factory=dict)
    relays: dict[str, RelayState] = field(default_factory=dict)
    liveness: dict[str, Heard] = field(default_factory=dict)
    situation: dict[str, Situation] = field(default_factory=dict)
    changed_at: dict[str, float] = field(default_factory=dict)


_read_file = json_decoder(_File)
