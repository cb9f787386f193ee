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


def test_decode_reads_the_file_bytes_as_from_dict_reads_the_dict() -> None:
    mem = sample()
    data = json.dumps(mem.to_dict()).encode()
    assert Memory.decode(data) == mem == Memory.from_dict(json.loads(data))
    assert Memory.decode(json.dumps(Memory().to_dict()).encode()) == Memory()
    assert Memory.decode(b"{}") == Memory()
    assert Memory.decode(b'{"version": 1, "future": [1, {"x": 2}]}') == Memory()  # skipped


@pytest.mark.parametrize("junk", [
    b"", b"{garbage", b"[]", b'"x"', b"null", b'{"paths": []}',
    b'{"paths": {"b": {"nope": 1}}}', b'{"liveness": {"b": ["x", 1]}}',
    b'{"liveness": {"b": [1, NaN]}}', b'{"liveness": {"b": [1, 1e400]}}',
    b'{"situation": {"b": [1, "m", null, "m"]}}', b'{"situation": {"b": ["only-one"]}}',
    b'{"changed_at": {"b": true}}', b'{"relays": {"r": {"since": "soon"}}}',
])
def test_decode_refuses_what_parse_refuses(junk) -> None:
    assert Memory.decode(junk) is None
    try:
        doc = json.loads(junk)
    except ValueError:
        return  # not JSON at all: the state dir reports the file as corrupt
    assert Memory.parse(doc) is None


def test_what_only_the_lenient_reader_takes_is_still_read(tmp_path) -> None:
    """A count written as 1.0: ``decode`` is strict, so ``agent.gather`` falls
    back to ``parse``, which takes it, and the memory is kept."""
    from reconciler.agent.gather import read_memory_and_feed
    from reconciler.agent.state import PEERING, StateDir

    doc = sample().to_dict()
    doc["paths"]["b"]["failures"] = 2.0
    (tmp_path / PEERING).write_text(json.dumps(doc))
    assert Memory.decode((tmp_path / PEERING).read_bytes()) is None
    warnings: list[str] = []
    memory, _, stored = read_memory_and_feed(StateDir(tmp_path), warnings)
    assert memory == sample() and stored and warnings == []
