"""The fault run's verdict (bench/faultproof/verify.judge): pure counting over recorded
answers and what the reader found, so each promise is checked to fail for its own reason."""

from __future__ import annotations

from bench.faultproof.load import NO_ANSWER, Answer, DirectRecord, LoadResult
from bench.faultproof.verify import judge


def ok(request_id: str, *offsets: tuple[int, int]) -> Answer:
    return Answer(request_id, len(offsets), False, 200, None, None, list(offsets), 0.0, 0.1)


def refused(request_id: str, records: int = 2) -> Answer:
    return Answer(request_id, records, True, 422, "schema_validation_failed", None, None, 0.0, 0.1)


def unavailable(request_id: str, *, retry_after: str | None = "5", status: int = 503) -> Answer:
    return Answer(request_id, 1, False, status, "kafka_unavailable", retry_after, None, 0.0, 10.0)


def run(answers: list[Answer], found: dict[tuple[str, int], list[tuple[int, int]]],
        direct: list[DirectRecord] | None = None) -> list[str]:  # fmt: skip
    return judge(LoadResult(answers, direct or []), found, "r").violations


def test_a_clean_run_breaks_no_promise_and_counts_each_kind() -> None:
    # given a 200 of two records found once each where it said, a refused batch absent, a
    # 503 whose record was written after all, and an acknowledged direct record found once
    answers = [ok("r-1", (0, 5), (0, 6)), refused("r-2"), unavailable("r-3")]
    found = {("r-1", 0): [(0, 5)], ("r-1", 1): [(0, 6)], ("r-3", 0): [(1, 2)], ("r-direct-1", 0): [(2, 0)]}
    direct = [DirectRecord("r-direct-1", 0.0, acked=(2, 0)), DirectRecord("r-direct-2", 0.0, error="timed out")]

    # when it is judged
    verdict = judge(LoadResult(answers, direct), found, "r")

    # then nothing is violated and the numbers add up
    assert verdict.violations == []
    assert (verdict.sent, verdict.ok, verdict.refused, verdict.unavailable) == (5, 2, 2, 1)
    assert (verdict.found, verdict.missing, verdict.duplicated, verdict.unavailable_found) == (3, 0, 0, 1)
    assert (verdict.direct_acked, verdict.direct_failed, verdict.direct_found) == (1, 1, 1)


def test_each_broken_promise_is_named() -> None:
    # given every kind of failure once (besides one good 200)
    answers = [
        ok("r-1", (0, 1)),
        ok("r-2", (0, 2)),  # missing
        ok("r-3", (0, 3)),  # duplicated
        ok("r-4", (0, 4)),  # found elsewhere
        refused("r-5", records=1),  # found although refused
        unavailable("r-6", retry_after=None),
        unavailable("r-7", status=500),
        Answer("r-8", 1, False, NO_ANSWER, None, None, None, 0.0, 30.0, error="TimeoutError: timed out"),
    ]
    found = {("r-1", 0): [(0, 1)], ("r-3", 0): [(0, 3), (0, 9)], ("r-4", 0): [(1, 4)], ("r-5", 0): [(0, 5)],
             ("r-99", 0): [(0, 7)]}  # fmt: skip
    direct = [DirectRecord("r-direct-1", 0.0, acked=(2, 0))]

    # when it is judged
    violations = run(answers, found, direct)

    # then each one is reported
    assert "1 records answered 200 are not on the topic" in violations
    assert "1 HTTPS records are on the topic more than once" in violations
    assert "1 records answered 200 are not at the offset the answer named" in violations
    assert "1 records of refused requests are on the topic" in violations
    assert "1 records on the topic were never sent" in violations
    assert "1 records the direct producer had acknowledged are not on the topic" in violations
    assert "1 answers were 503 kafka_unavailable without Retry-After, not 200 or 503 + Retry-After" in violations
    assert "1 answers were 500 kafka_unavailable, not 200 or 503 + Retry-After" in violations
    assert any(v.startswith("1 answers were no answer (TimeoutError") for v in violations)
    # and a 422 of a valid batch is not what a fault may answer either
    assert run([ok("r-1", (0, 1)), Answer("r-2", 1, False, 422, "x", None, None, 0, 0)], {("r-1", 0): [(0, 1)]}) == [
        "1 answers were 422 x, not 200 or 503 + Retry-After"
    ]


def test_a_run_without_any_200_proves_nothing() -> None:
    assert run([unavailable("r-1")], {}) == ["no request was answered 200: the run proves nothing"]
