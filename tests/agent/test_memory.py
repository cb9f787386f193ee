"""agent.memory: the typed peering memory and its file form."""

import json

import pytest

from reconciler.agent import peering as p
from reconciler.agent.memory import Heard, Memory


def sample() -> Memory:
    return Memory(
        peering=p.PeeringState({"b": p.PathState("relay", 1.5, 2, 99.0)},
                               {"relay-1": p.RelayState(3.0, 1, 40.0)}),
        heard={"b": Heard(1234, 17.0)},
        situations={"b": ("198.51.100.1", "independent", None, "unknown")},
        changed_at={"b": 12.0},
    )


def test_round_trip_through_json() -> None:
    mem = sample()
    assert Memory.from_dict(json.loads(json.dumps(mem.to_dict()))) == mem


def test_the_file_keeps_the_keys_agents_wrote_before() -> None:
    doc = sample().to_dict()
    assert set(doc) == {"version", "paths", "relays", "liveness", "situation", "changed_at"}
    assert doc["liveness"] == {"b": [1234, 17.0]}
    assert "changed_at" not in Memory().to_dict()


@pytest.mark.parametrize("junk", [
    None, [], "x", {"paths": {"b": {"nope": 1}}}, {"paths": []},
    {"liveness": {"b": ["x", 1]}}, {"liveness": {"b": [1, float("nan")]}},
    {"situation": {"b": [1, "m", None, "m"]}}, {"situation": {"b": ["only-one"]}},
    {"changed_at": {"b": True}}, {"relays": {"r": {"since": "soon"}}},
])
def test_garbage_is_an_empty_memory(junk) -> None:
    assert Memory.from_dict(junk) == Memory()
