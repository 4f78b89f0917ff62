"""The sender: takes the buffer's next batch, sends it, and decides from Sluice's answer.

- 200: the batch's records leave the buffer.
- No answer (refused, reset, timeout), 5xx, 429, 409 ``idempotency_key_in_use`` or
  ``schema_not_found``: the same batch again under the same key, after ``Retry-After`` or a
  backoff (1 s doubling to 60 s, with jitter).  Sluice answers a retry of a batch it wrote with
  the first answer and writes nothing.
- 409 ``idempotency_outcome_unknown``: Kafka never confirmed that key's records; they are sent
  again under a new key, with an error logged (they may be in the topic twice: the one case
  where a record may be duplicated).
- 422 ``schema_validation_failed``: the records the error names (``/lines/<n>``) move to the
  ``rejected`` table (``sluice-agent status`` lists them); the others go again in a new batch.
- 413: the batch is halved; a single record refused for its size is rejected.
- 401 with a token: a new token, once; refused again, the agent stops.
- Any other 401 or 403 (revoked, superseded, disabled, suspended...), or 400/404/405/415: the
  agent stops with exit status 3 and the reason; the records stay buffered for a run with a
  working identity.

A refusal means nothing of the batch was written (Sluice's ingest is all or nothing), so a new
key for what is left can never duplicate anything.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
import threading
from dataclasses import dataclass

from sluice_agent.buffer import Batch, Buffer
from sluice_agent.transport import Answer, RenewalRefused, Sender, TokenRefused, expires_at, lifetime

log = logging.getLogger("sluice_agent")
LINE = re.compile(r"^/lines/(\d+)(?:/|$)")
RETRY_ANYWAY = {"idempotency_key_in_use", "schema_not_found", "schema_not_supported"}


class Stop(Exception):
    """Sluice refuses the agent's identity or requests: retrying cannot help."""


@dataclass
class Backoff:
    first: float = 1.0
    cap: float = 60.0
    current: float = 0.0

    def next(self, at_least: float = 0.0) -> float:
        self.current = min(self.cap, self.current * 2 if self.current else self.first)
        return max(at_least, self.current * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not secrecy)

    def reset(self) -> None:
        self.current = 0.0


class Forwarder:
    """Sends the buffer's batches until ``stop`` is set (or, when ``input_done`` is given, until
    that is set and the buffer is empty)."""

    def __init__(self, buffer: Buffer, sluice: Sender, *, renew_before: dt.timedelta | None = None,
                 idle: float = 0.2) -> None:  # fmt: skip
        self.buffer = buffer
        self.sluice = sluice
        self.renew_before = renew_before
        self.idle = idle
        self.backoff = Backoff()
        self.batch_limit: int | None = None
        self.sent_batches = 0
        self._next_renewal_check = 0.0
        self._token_retried = False

    def run(self, stop: threading.Event, input_done: threading.Event | None = None) -> None:
        while not stop.is_set():
            self.renew_if_due(stop)
            batch = self.buffer.batch_next(max_records=self.batch_limit)
            if batch is None:
                if input_done is not None and input_done.is_set() and self.buffer.batch_next() is None:
                    return
                stop.wait(self.idle)
                continue
            wait = self.send(batch)
            if wait:
                stop.wait(wait)

    def send(self, batch: Batch) -> float:
        """Send ``batch`` once and act on the answer; returns how long to wait before the next."""
        try:
            answer = self.sluice.send(batch.body, batch.key)
        except TokenRefused as exc:
            if exc.answer.status in (400, 401, 403):
                raise Stop(f"the token endpoint refused this client: {exc}") from exc
            return self._later(f"no token: {exc}", exc.answer.retry_after(0.0))
        except OSError as exc:
            return self._later(f"Sluice unreachable ({exc.__class__.__name__}: {exc})")
        except Exception as exc:  # noqa: BLE001 (http.client's protocol errors: a broken connection)
            return self._later(f"the connection broke ({exc.__class__.__name__}: {exc})")
        return self.decide(batch, answer)

    def decide(self, batch: Batch, answer: Answer) -> float:
        status, code = answer.status, answer.code
        if status == 200:
            self.buffer.batch_acknowledge(batch)
            self.backoff.reset()
            self._token_retried = False
            self.batch_limit = None
            self.sent_batches += 1
            replayed = " (a retry: Sluice had it already)" if answer.headers.get("idempotency-replayed") else ""
            log.info("sent batch %s: %d records%s", batch.key, len(batch.records), replayed)
            return 0.0
        if status >= 500 or status == 429 or (status == 409 and code in RETRY_ANYWAY):
            return self._later(f"{status} {code}: {answer.message}", answer.retry_after(0.0))
        if status == 409 and code == "idempotency_outcome_unknown":
            log.error("batch %s: Kafka never confirmed its records (%s); sending them again under a new key: "
                      "they may be in the topic twice", batch.key, answer.message)  # fmt: skip
            self.buffer.batch_dissolve(batch)
            return 0.0
        if status == 422 and code == "idempotency_key_reused":
            log.error("batch %s: Sluice holds this key for another body (%s); sending under a new key",
                      batch.key, answer.message)  # fmt: skip
            self.buffer.batch_dissolve(batch)
            return 0.0
        if status == 422:
            return self._reject(batch, answer)
        if status == 413:
            if len(batch.records) == 1:
                self.buffer.batch_dissolve(batch, rejected={0: (code or "payload_too_large", answer.message)})
                log.error("batch %s: its one record is refused as too large: rejected", batch.key)
            else:
                self.batch_limit = max(1, len(batch.records) // 2)
                log.warning("batch %s refused as too large (%s): sending %d records per batch",
                            batch.key, code, self.batch_limit)  # fmt: skip
                self.buffer.batch_dissolve(batch)
            return 0.0
        if status == 401 and self.sluice.credentials.uses_token and not self._token_retried:
            self._token_retried = True
            self.sluice.credentials.forget_token()
            return 0.0
        raise Stop(f"Sluice refused the agent: {status} {code}: {answer.message}. "
                   f"The {self.buffer.stats()['buffered']} buffered records are kept; fix the identity "
                   "(a new certificate or client) and start the agent again.")  # fmt: skip

    def _reject(self, batch: Batch, answer: Answer) -> float:
        """422: move the records the error names aside; the rest go again under a new key."""
        fields = answer.body.get("error", {}).get("fields", []) if isinstance(answer.body, dict) else []
        named: dict[int, tuple[str, str]] = {}
        for item in fields if isinstance(fields, list) else []:
            match = LINE.match(str(item.get("pointer", ""))) if isinstance(item, dict) else None
            if match and 1 <= int(match[1]) <= len(batch.records):
                index = int(match[1]) - 1
                detail = f"{item.get('pointer')} {item.get('code')}: {item.get('message')}"
                code, previous = named.get(index, (str(item.get("code", answer.code)), ""))
                named[index] = (code, f"{previous}; {detail}" if previous else detail)
        if not named:  # the error names no line: the whole batch is refused
            named = dict.fromkeys(range(len(batch.records)), (answer.code or "unprocessable", answer.message))
        for index, (code, detail) in sorted(named.items()):
            log.error("batch %s: record %d rejected (%s): %s", batch.key, index + 1, code, detail)
        self.buffer.batch_dissolve(batch, rejected=named)
        return 0.0

    def _later(self, why: str, at_least: float = 0.0) -> float:
        wait = self.backoff.next(at_least)
        log.warning("%s; trying again in %.1f s", why, wait)
        return wait

    # -- certificate renewal ------------------------------------------------------------

    def renew_if_due(self, stop: threading.Event) -> None:
        """Renew the certificate over EST when what is left of it is under ``renew_before`` (by
        default a third of its lifetime).  Checked at start and then every 10 minutes; a refusal
        is logged and tried again at the next check (the current certificate still works)."""
        cert = self.sluice.credentials.cert
        now = dt.datetime.now(dt.UTC)
        if cert is None or now.timestamp() < self._next_renewal_check:
            return
        self._next_renewal_check = now.timestamp() + 600
        before = self.renew_before if self.renew_before is not None else lifetime(cert) / 3
        if expires_at(cert) - now > before:
            return
        try:
            renewed = self.sluice.renew_certificate()
        except (OSError, RenewalRefused, ValueError) as exc:
            log.error("certificate renewal failed (%s); still using the current certificate, expiring %s",
                      exc, expires_at(cert).isoformat())  # fmt: skip
            return
        log.info("certificate renewed over EST: serial %x, valid until %s", renewed.serial_number,
                 renewed.not_valid_after_utc.isoformat())  # fmt: skip
