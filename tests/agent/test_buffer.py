"""The agent's disk buffer: bounds with the oldest records dropped, and batches that are the
same records under the same key at every send, across restarts (a new connection to the file
is what a restarted agent gets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sluice_agent.buffer import Buffer, Limits


def records(start: int, count: int) -> list[str]:
    return [json.dumps({"n": n}) for n in range(start, start + count)]


def numbers(texts: list[str] | tuple[str, ...]) -> list[int]:
    return [json.loads(t)["n"] for t in texts]


def test_a_full_buffer_drops_the_oldest_records_and_counts_them(tmp_path: Path) -> None:
    # given a buffer bounded at 10 records
    buffer = Buffer(tmp_path / "b.sqlite3", Limits(max_records=10, batch_records=4))
    buffer.add(records(0, 8))

    # when 5 more arrive
    dropped = buffer.add(records(8, 5))

    # then the 3 oldest are gone, the newest kept, and the drop is counted
    assert dropped == 3
    assert numbers(buffer.bodies()) == list(range(3, 13))
    assert buffer.stats()["dropped"] == 3
    assert buffer.stats()["buffered"] == 10


def test_the_byte_bound_drops_the_oldest_too(tmp_path: Path) -> None:
    # given a buffer bounded at 90 bytes, holding records of 9 bytes ({"n": 10}..)
    buffer = Buffer(tmp_path / "b.sqlite3", Limits(max_bytes=90, batch_bytes=45, batch_records=2))
    buffer.add(records(10, 10))
    assert buffer.stats()["buffered_bytes"] == 90

    # when one more arrives, the oldest makes room
    assert buffer.add(records(20, 1)) == 1
    assert numbers(buffer.bodies())[0] == 11
    assert buffer.stats()["buffered_bytes"] == 90


def test_records_of_a_batch_already_sent_are_not_dropped(tmp_path: Path) -> None:
    # given a full buffer whose 4 oldest records were sent in a batch (not yet acknowledged)
    buffer = Buffer(tmp_path / "b.sqlite3", Limits(max_records=6, batch_records=4))
    buffer.add(records(0, 6))
    batch = buffer.batch_next()
    assert batch is not None

    # when 2 more arrive
    buffer.add(records(6, 2))

    # then the oldest records outside the batch made room, and the batch is intact
    assert numbers(buffer.bodies()) == [0, 1, 2, 3, 6, 7]
    assert buffer.batch_next() == batch


def test_a_batch_is_the_same_records_and_key_after_a_restart(tmp_path: Path) -> None:
    # given a batch formed (and perhaps sent) by an agent that then died
    path = tmp_path / "b.sqlite3"
    first = Buffer(path, Limits(batch_records=3))
    first.add(records(0, 5))
    batch = first.batch_next()
    assert batch is not None
    first.close()

    # when the agent starts again, and more records arrive meanwhile
    again = Buffer(path, Limits(batch_records=3))
    again.add(records(5, 2))

    # then its next batch is the same: same key, same body bytes
    retry = again.batch_next()
    assert retry is not None
    assert (retry.key, retry.body) == (batch.key, batch.body)
    assert retry.body == b'{"n": 0}\n{"n": 1}\n{"n": 2}\n'
    # and only an acknowledgement removes its records; the next batch has a new key
    again.batch_acknowledge(retry)
    following = again.batch_next()
    assert following is not None
    assert following.key != batch.key
    assert numbers(following.records) == [3, 4, 5]


def test_keys_are_never_reused_even_after_every_batch_was_acknowledged(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.sqlite3", Limits(batch_records=2))
    keys = []
    for start in (0, 2, 4):
        buffer.add(records(start, 2))
        batch = buffer.batch_next()
        assert batch is not None
        keys.append(batch.key)
        buffer.batch_acknowledge(batch)
    assert len(set(keys)) == 3
    # and another agent's buffer (another state directory) has keys of its own
    other = Buffer(tmp_path / "other.sqlite3", Limits(batch_records=2))
    other.add(records(0, 2))
    other_batch = other.batch_next()
    assert other_batch is not None
    assert other_batch.key not in keys


def test_a_refused_batch_moves_the_named_records_aside_and_the_rest_go_under_a_new_key(tmp_path: Path) -> None:
    # given a batch of 4 of which Sluice refused the second
    buffer = Buffer(tmp_path / "b.sqlite3", Limits(batch_records=4))
    buffer.add(records(0, 4))
    batch = buffer.batch_next()
    assert batch is not None

    # when it is dissolved with that record rejected
    buffer.batch_dissolve(batch, rejected={1: ("type", "/lines/2/n type: not a string")})

    # then the record is in the rejected table, the others in a new batch with a new key
    (rejected,) = buffer.rejected_records()
    assert (json.loads(str(rejected["record"])), rejected["code"]) == ({"n": 1}, "type")
    retry = buffer.batch_next()
    assert retry is not None
    assert retry.key != batch.key
    assert numbers(retry.records) == [0, 2, 3]


def test_a_batch_stays_under_the_byte_limit(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.sqlite3", Limits(batch_bytes=30, batch_records=10, max_bytes=1000))
    buffer.add(records(10, 5))  # 9 bytes each, 10 with its newline
    batch = buffer.batch_next()
    assert batch is not None
    assert len(batch.records) == 3
    assert len(batch.body) <= 30


def test_limits_must_hold_one_batch() -> None:
    with pytest.raises(ValueError, match="at least one batch"):
        Limits(max_records=10, batch_records=20)
    with pytest.raises(ValueError, match="500"):
        Limits(batch_records=501)
