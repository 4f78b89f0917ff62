"""The sender's decisions on Sluice's answers (pure logic over the buffer: the answers are
built here; the real ones are in tests/integration/test_agent.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sluice_agent.buffer import Batch, Buffer, Limits
from sluice_agent.forward import Forwarder, Stop
from sluice_agent.transport import Answer, Credentials, Sluice


def error(status: int, code: str, *, fields: list[dict[str, str]] | None = None, **headers: str) -> Answer:
    return Answer(status, headers, {"error": {"code": code, "message": "m", "fields": fields or []}})


@pytest.fixture
def buffer(tmp_path: Path) -> Buffer:
    buffer = Buffer(tmp_path / "b.sqlite3", Limits(batch_records=4))
    buffer.add([json.dumps({"n": n}) for n in range(4)])
    return buffer


def forwarder(buffer: Buffer, tmp_path: Path, **credentials: Any) -> Forwarder:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    # the context is never used here: no request is made
    sluice = Sluice.__new__(Sluice)
    sluice.credentials = Credentials(ca=ca, **credentials)
    return Forwarder(buffer, sluice)


def first(buffer: Buffer) -> Batch:
    batch = buffer.batch_next()
    assert batch is not None
    return batch


@pytest.mark.parametrize(
    "answer",
    [
        Answer(503, {"retry-after": "5"}, None),
        error(429, "rate_limited", **{"retry-after": "2"}),
        error(409, "idempotency_key_in_use", **{"retry-after": "1"}),
    ],
)
def test_a_transient_answer_keeps_the_batch_and_its_key(buffer: Buffer, tmp_path: Path, answer: Answer) -> None:
    sender = forwarder(buffer, tmp_path)
    batch = first(buffer)
    wait = sender.decide(batch, answer)
    assert wait >= float(answer.headers["retry-after"])
    assert first(buffer) == batch


def test_an_unknown_outcome_sends_the_records_again_under_a_new_key(buffer: Buffer, tmp_path: Path) -> None:
    batch = first(buffer)
    forwarder(buffer, tmp_path).decide(batch, error(409, "idempotency_outcome_unknown"))
    again = first(buffer)
    assert again.key != batch.key
    assert again.records == batch.records


def test_a_batch_too_large_is_halved_and_a_single_record_rejected(buffer: Buffer, tmp_path: Path) -> None:
    sender = forwarder(buffer, tmp_path)
    sender.decide(first(buffer), error(413, "payload_too_large"))
    assert sender.batch_limit == 2
    smaller = buffer.batch_next(max_records=sender.batch_limit)
    assert smaller is not None
    assert len(smaller.records) == 2
    buffer.batch_acknowledge(smaller)
    single = buffer.batch_next(max_records=1)
    assert single is not None
    sender.decide(single, error(413, "payload_too_large"))
    assert [r["code"] for r in buffer.rejected_records()] == ["payload_too_large"]


def test_an_invalid_record_is_rejected_and_the_rest_sent_again(buffer: Buffer, tmp_path: Path) -> None:
    batch = first(buffer)
    fields = [{"pointer": "/lines/3/n", "code": "type", "message": "not a string"}]
    forwarder(buffer, tmp_path).decide(batch, error(422, "schema_validation_failed", fields=fields))
    assert [json.loads(str(r["record"])) for r in buffer.rejected_records()] == [{"n": 2}]
    assert [json.loads(r)["n"] for r in first(buffer).records] == [0, 1, 3]


@pytest.mark.parametrize("code", ["certificate_revoked", "device_disabled", "tenant_suspended"])
def test_a_refused_identity_stops_the_agent_and_keeps_the_records(buffer: Buffer, tmp_path: Path, code: str) -> None:
    batch = first(buffer)
    with pytest.raises(Stop, match=code):
        forwarder(buffer, tmp_path).decide(batch, error(403, code))
    assert first(buffer) == batch


def test_an_expired_token_is_fetched_again_once_then_the_agent_stops(buffer: Buffer, tmp_path: Path) -> None:
    sender = forwarder(buffer, tmp_path, client_id="c", client_secret="s")
    batch = first(buffer)
    assert sender.decide(batch, error(401, "token_expired")) == 0.0
    with pytest.raises(Stop, match="token_expired"):
        sender.decide(batch, error(401, "token_expired"))
