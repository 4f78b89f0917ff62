"""How one request's delivery reports become its answer (``ingest.kafka._Waiter``).

One callback serves a whole request and places the reports by their order of arrival,
which librdkafka keeps per partition; when the reports show that order did not hold (more
than one partition, offsets not rising), each report is placed by its record's
``sluice-record-index`` header instead.  The real broker's side of this is
``tests/integration/test_ingest.py`` (offsets in the answer = offsets read back, in order).
"""

from __future__ import annotations

import asyncio

from confluent_kafka import KafkaError, Message

from ingest.kafka import RECORD_INDEX_HEADER, _Waiter


def report(index: int, partition: int, offset: int) -> Message:
    return Message(topic="iot.acme.eu.t", partition=partition, offset=offset,
                   headers=[("sluice-device", b"d1"), (RECORD_INDEX_HEADER, str(index).encode())])  # fmt: skip


def waiter_with(
    count: int, reports: list[tuple[KafkaError | None, Message]], indexes: list[int] | None = None
) -> _Waiter:
    loop = asyncio.new_event_loop()
    try:
        waiter = _Waiter(count, loop.create_future(), indexes)
        waiter.pending = len(reports)
        for error, message in reports:
            waiter.on_delivery(error, message)
        waiter.seal()
        assert waiter.future.done()
        return waiter
    finally:
        loop.close()


def test_reports_in_produce_order_are_placed_by_arrival() -> None:
    waiter = waiter_with(3, [(None, report(i, 4, 100 + i)) for i in range(3)])
    delivered, errors = waiter.place()
    assert delivered == [(4, 100), (4, 101), (4, 102)]
    assert errors == [None, None, None]


def test_offsets_may_have_gaps_where_other_writers_came_between() -> None:
    waiter = waiter_with(3, [(None, report(0, 4, 10)), (None, report(1, 4, 11)), (None, report(2, 4, 57))])
    assert waiter.place()[0] == [(4, 10), (4, 11), (4, 57)]


def test_reports_from_two_partitions_are_placed_by_their_record_index() -> None:
    # the topic grew while the request was produced: records 0 and 2 went to partition 1
    arrived = [(None, report(1, 3, 7)), (None, report(0, 1, 20)), (None, report(2, 1, 21))]
    assert waiter_with(3, arrived).place()[0] == [(1, 20), (3, 7), (1, 21)]


def test_some_records_of_a_request_are_placed_by_where_their_index_sits_among_them() -> None:
    # the valid records 1, 3 and 4 of a request that dead-lettered the others, reported out of order
    arrived = [(None, report(3, 1, 8)), (None, report(1, 0, 20)), (None, report(4, 1, 9))]
    assert waiter_with(3, arrived, indexes=[1, 3, 4]).place()[0] == [(0, 20), (1, 8), (1, 9)]


def test_offsets_that_do_not_rise_are_placed_by_their_record_index() -> None:
    arrived = [(None, report(1, 4, 11)), (None, report(0, 4, 10))]
    assert waiter_with(2, arrived).place()[0] == [(4, 10), (4, 11)]


def test_errors_are_placed_and_leave_their_records_unacknowledged() -> None:
    timed_out = KafkaError(KafkaError._MSG_TIMED_OUT)
    arrived = [(None, report(0, 4, 10)), (timed_out, report(1, 4, -1001))]
    delivered, errors = waiter_with(3, arrived).place()
    assert delivered == [(4, 10), None, None]
    assert errors == [None, timed_out, None]


def test_a_request_whose_deadline_came_first_places_the_reports_that_arrived() -> None:
    loop = asyncio.new_event_loop()
    try:
        waiter = _Waiter(3, loop.create_future())
        waiter.pending = 3
        waiter.on_delivery(None, report(0, 2, 5))
        waiter.seal()
        assert not waiter.future.done()
        waiter.expire()
        assert waiter.future.done()
        assert waiter.place() == ([(2, 5), None, None], [None, None, None])
    finally:
        loop.close()


def test_a_report_without_a_readable_index_is_left_unplaced() -> None:
    odd = Message(topic="t", partition=9, offset=1, headers=[(RECORD_INDEX_HEADER, b"x")])
    arrived = [(None, report(0, 4, 10)), (None, odd)]
    assert waiter_with(2, arrived).place()[0] == [(4, 10), None]
