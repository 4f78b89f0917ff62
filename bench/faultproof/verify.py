"""The independent reader and the verdict of a fault run.

The reader is its own principal (``target.VERIFIER``, a certificate of its own with a read
grant), not the platform admin, and reads with ``isolation.level=read_committed``: what a
tenant's backend would see.  It reads every partition of the topic from the beginning to
the end offset it asked for once the load had stopped, and keeps, for each record of this
run, its (request id, record index) and where it was found.

The verdict (``judge``) counts per record and states the promises as violations:

* every record of a 200 is on the topic exactly once, at the offset the 200 named;
* every record the direct producer had acknowledged is on the topic exactly once;
* no record of a refused request (a 4xx: the load's deliberately invalid batches) is there;
* nothing is there that was never sent;
* every answer other than a 200 or the expected 422 is a 503 with ``Retry-After`` (a
  dependency down, "retry later"), never another error and never no answer at all.

A record of a 503 may or may not be there (the acknowledgement can be what was lost, which
the 503's message says); those are counted, not judged, as are the direct producer's
records whose delivery failed."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from bench.faultproof.load import NO_ANSWER, RECORD_INDEX_HEADER, REQUEST_ID_HEADER, LoadResult
from bench.faultproof.target import VERIFIER, Target

RecordKey = tuple[str, int]  # (request id, record index)
Position = tuple[int, int]  # (partition, offset)


def read_topic(target: Target, run_id: str, *, timeout: float = 120.0) -> dict[RecordKey, list[Position]]:
    """Every record of run ``run_id`` on the topic, by (request id, index), with where each
    copy was found.  Raises if the end offsets are not reached within ``timeout``."""
    consumer = Consumer({
        "bootstrap.servers": target.bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(target.ca_file),
        "ssl.certificate.pem": target.verifier.certificate_pem,
        "ssl.key.pem": target.verifier.key_pem,
        "group.id": f"{VERIFIER}.{run_id}",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    })  # fmt: skip
    found: dict[RecordKey, list[Position]] = defaultdict(list)
    prefix = f"{run_id}-".encode()
    try:
        partitions = sorted(consumer.list_topics(target.topic, timeout=30).topics[target.topic].partitions)
        # read_committed: the end is the last stable offset, which is the high watermark when
        # no transaction is open (neither ingest nor the direct producer is transactional).
        ends = {p: consumer.get_watermark_offsets(TopicPartition(target.topic, p), timeout=30)[1] for p in partitions}
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(target.topic, p, OFFSET_BEGINNING) for p in pending])
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the verifier did not reach the end of partitions {sorted(pending)} "
                                   f"within {timeout:.0f} s")  # fmt: skip
            message = consumer.poll(1.0)
            if message is None:
                continue
            partition = message.partition() or 0
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if partition in pending and _position(consumer, target.topic, partition) >= ends[partition]:
                        pending.discard(partition)
                    continue
                raise KafkaException(error)
            offset = message.offset() or 0
            headers = {pair[0]: pair[1] for pair in message.headers() or [] if isinstance(pair[1], bytes)}
            request_id = headers.get(REQUEST_ID_HEADER, b"")
            if request_id.startswith(prefix):
                index = int(headers.get(RECORD_INDEX_HEADER, b"-1"))
                found[(request_id.decode(), index)].append((partition, offset))
            if offset + 1 >= ends[partition]:
                pending.discard(partition)
    finally:
        consumer.close()
    return dict(found)


def _position(consumer: Consumer, topic: str, partition: int) -> int:
    (position,) = consumer.position([TopicPartition(topic, partition)])
    return position.offset


@dataclass
class Verdict:
    """The numbers of one run (records unless named otherwise) and what broke a promise."""

    requests: int = 0
    sent: int = 0
    ok: int = 0  # records answered 200
    refused: int = 0  # records of 4xx answers
    unavailable: int = 0  # records of 503 answers
    unanswered: int = 0  # records of requests that got no HTTP answer
    other: int = 0  # records of any other answer
    found: int = 0  # distinct records of this run found on the topic
    missing: int = 0  # 200 records not found
    duplicated: int = 0  # records found more than once (any)
    misplaced: int = 0  # 200 records not at the offset the 200 named
    refused_found: int = 0
    unavailable_found: int = 0  # 503 records found after all (allowed: said "may have been written")
    unsent_found: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503 kafka_unavailable", ...
    slowest_503: float = 0.0  # seconds from sending to a 503 (ingest waits for Kafka first)
    direct_sent: int = 0
    direct_acked: int = 0
    direct_failed: int = 0
    direct_unreported: int = 0
    direct_found: int = 0
    direct_missing: int = 0
    direct_duplicated: int = 0
    direct_failed_found: int = 0
    violations: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"HTTPS ingest: {self.requests} requests, {self.sent} records sent",
            f"  answers: {', '.join(f'{k}: {v}' for k, v in sorted(self.statuses.items()))}",
            f"  records: 200 {self.ok}, refused (4xx) {self.refused}, 503 {self.unavailable}, "
            f"no answer {self.unanswered}, other {self.other}; the slowest 503 came after {self.slowest_503:.1f} s",
            f"  on the topic: found {self.found}, missing (200 not found) {self.missing}, "
            f"duplicated {self.duplicated}, 200 at another offset {self.misplaced}, refused found "
            f"{self.refused_found}, never sent found {self.unsent_found}, 503 found anyway {self.unavailable_found}",
            f"direct producer: {self.direct_sent} records sent, {self.direct_acked} acknowledged, "
            f"{self.direct_failed} failed, {self.direct_unreported} unreported",
            f"  on the topic: found {self.direct_found}, missing (acknowledged not found) {self.direct_missing}, "
            f"duplicated {self.direct_duplicated}, failed found anyway {self.direct_failed_found}",
            "verdict: " + ("every promise held" if not self.violations else "VIOLATED"),
            *(f"  - {v}" for v in self.violations),
        ]


def judge(result: LoadResult, found: dict[RecordKey, list[Position]], run_id: str) -> Verdict:
    verdict = Verdict()
    sent: set[RecordKey] = set()
    bad_answers: Counter[str] = Counter()
    for answer in result.answers:
        verdict.requests += 1
        keys = [(answer.request_id, i) for i in range(answer.records)]
        sent.update(keys)
        verdict.sent += answer.records
        label = str(answer.status) if answer.status == 200 else f"{answer.status or 'no answer'} {answer.code or ''}"
        verdict.statuses[label.strip()] += 1
        present = [k for k in keys if k in found]
        if answer.status == 200:
            verdict.ok += answer.records
            for key, where in zip(keys, answer.offsets or [], strict=False):
                copies = found.get(key, [])
                if not copies:
                    verdict.missing += 1
                elif copies[0] != tuple(where):
                    verdict.misplaced += 1
            verdict.missing += max(0, answer.records - len(answer.offsets or []))
        elif 400 <= answer.status < 500:
            verdict.refused += answer.records
            verdict.refused_found += len(present)
            if not (answer.invalid and answer.status == 422):
                bad_answers[f"{answer.status} {answer.code}"] += 1
        elif answer.status == 503:
            verdict.unavailable += answer.records
            verdict.unavailable_found += len(present)
            verdict.slowest_503 = max(verdict.slowest_503, answer.answered_at - answer.sent_at)
            if not answer.retry_after:
                bad_answers[f"503 {answer.code} without Retry-After"] += 1
        elif answer.status == NO_ANSWER:
            verdict.unanswered += answer.records
            bad_answers[f"no answer ({answer.error[:80]})"] += 1
        else:
            verdict.other += answer.records
            bad_answers[f"{answer.status} {answer.code}"] += 1
        if answer.invalid and answer.status == 200:
            bad_answers["200 for a batch with an invalid record"] += 1
    direct_sent: set[RecordKey] = set()
    for record in result.direct:
        key = (record.request_id, 0)
        direct_sent.add(key)
        verdict.direct_sent += 1
        copies = found.get(key, [])
        if record.acked is not None:
            verdict.direct_acked += 1
            if not copies:
                verdict.direct_missing += 1
        elif record.error is not None:
            verdict.direct_failed += 1
            verdict.direct_failed_found += bool(copies)
        else:
            verdict.direct_unreported += 1
        verdict.direct_found += bool(copies)
        verdict.direct_duplicated += len(copies) > 1
    for key, copies in found.items():
        if key in direct_sent:
            continue
        verdict.found += 1
        verdict.duplicated += len(copies) > 1
        if key not in sent:
            verdict.unsent_found += 1
    _violations(verdict, bad_answers)
    return verdict


def _violations(verdict: Verdict, bad_answers: Counter[str]) -> None:
    checks: list[tuple[int, str]] = [
        (verdict.missing, "records answered 200 are not on the topic"),
        (verdict.misplaced, "records answered 200 are not at the offset the answer named"),
        (verdict.duplicated, "HTTPS records are on the topic more than once"),
        (verdict.refused_found, "records of refused requests are on the topic"),
        (verdict.unsent_found, "records on the topic were never sent"),
        (verdict.direct_missing, "records the direct producer had acknowledged are not on the topic"),
        (verdict.direct_duplicated, "direct records are on the topic more than once"),
    ]
    verdict.violations += [f"{count} {what}" for count, what in checks if count]
    verdict.violations += [f"{count} answers were {what}, not 200 or 503 + Retry-After"
                           for what, count in sorted(bad_answers.items())]  # fmt: skip
    if verdict.ok == 0:
        verdict.violations.append("no request was answered 200: the run proves nothing")


def summary_table(verdict: Verdict) -> list[str]:
    """The figures as a Markdown table (for reports)."""
    rows: list[tuple[str, Any]] = [
        ("HTTPS requests", verdict.requests),
        ("HTTPS records sent", verdict.sent),
        ("answered 200 (records)", verdict.ok),
        ("refused 4xx (records)", verdict.refused),
        ("answered 503 + Retry-After (records)", verdict.unavailable),
        ("no answer (records)", verdict.unanswered),
        ("slowest 503 (seconds from sending)", f"{verdict.slowest_503:.1f}"),
        ("found on the topic", verdict.found),
        ("missing (200 not found)", verdict.missing),
        ("duplicated", verdict.duplicated),
        ("refused but found", verdict.refused_found),
        ("503 but found (allowed)", verdict.unavailable_found),
        ("direct: sent / acknowledged / failed", f"{verdict.direct_sent} / {verdict.direct_acked} / "
                                                 f"{verdict.direct_failed}"),
        ("direct: found / missing / duplicated", f"{verdict.direct_found} / {verdict.direct_missing} / "
                                                 f"{verdict.direct_duplicated}"),
    ]  # fmt: skip
    return ["| figure | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]
