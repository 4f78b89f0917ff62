"""The agent's disk buffer: one SQLite file holding the records not yet acknowledged, the
batches they were sent in, the records Sluice refused, and where each followed file was read to.

Why the batch is stored.  Sluice recognises a retry by its ``Idempotency-Key`` *and* its body
(the same key with another body is 422 ``idempotency_key_reused``).  So a batch is formed once,
written down (its records are marked with its id, its key is ``<agent id>-<batch id>``) before
it is first sent, and every later send of it -- after a timeout, a cut network, a kill -9, a
reboot -- sends the same records in the same order under the same key: Sluice writes them once.
A record leaves the buffer only when Sluice acknowledged its batch (``batch_acknowledge``).

Bounds.  ``max_records`` and ``max_bytes`` bound the records held.  When a new record would
exceed them, the OLDEST records that are not in a batch are dropped (the newest data is kept;
a batch already sent keeps its records, or its key would name another body), counted in
``dropped`` and reported to the caller, which logs them.  A batch holds at most the batch
limits, so the buffer holds at most ``max(bounds, one batch)``.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, size INTEGER NOT NULL, batch INTEGER
);
CREATE INDEX IF NOT EXISTS records_batch ON records (batch);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, code TEXT NOT NULL, detail TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    path TEXT PRIMARY KEY, device INTEGER NOT NULL, inode INTEGER NOT NULL, offset INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Limits:
    """The buffer's bounds (records held) and one batch's (what one request may carry:
    Sluice's ingest takes at most 500 records and 1 MiB per request)."""

    max_records: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    batch_records: int = 500
    batch_bytes: int = 900 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.batch_records <= 500:
            raise ValueError("batch_records must be between 1 and 500 (ingest's limit per request)")
        if not 1 <= self.batch_bytes <= 1024 * 1024 - 1024:
            raise ValueError("batch_bytes must be positive and under ingest's 1 MiB per request")
        if self.max_records < self.batch_records or self.max_bytes < self.batch_bytes:
            raise ValueError("the buffer must hold at least one batch (max_records >= batch_records, "
                             "max_bytes >= batch_bytes)")  # fmt: skip


@dataclass(frozen=True)
class Batch:
    """Records sent together under one idempotency key; ``body`` is the same bytes at every send."""

    id: int
    key: str
    record_ids: tuple[int, ...]
    records: tuple[str, ...]

    @property
    def body(self) -> bytes:
        return ("\n".join(self.records) + "\n").encode()


@dataclass(frozen=True)
class Position:
    """How far a followed file was read: the file (device, inode) and the byte offset after
    the last complete line taken into the buffer."""

    path: str
    device: int
    inode: int
    offset: int


class Buffer:
    """One connection to the buffer file.  Each thread opens its own (SQLite in WAL mode lets the
    intake write while the sender reads)."""

    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a record acknowledged to the intake survives a power cut, not only a crash.
        self.db.execute("PRAGMA synchronous=FULL")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('agent_id', ?)", (secrets.token_hex(8),))
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', '0')")

    def close(self) -> None:
        self.db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)

    @property
    def agent_id(self) -> str:
        return str(self.db.execute("SELECT value FROM meta WHERE name = 'agent_id'").fetchone()[0])

    # -- intake ---------------------------------------------------------------------------

    def add(self, records: Iterable[str], position: Position | None = None) -> int:
        """Store ``records`` (JSON texts, one object each) and, in the same transaction, the
        position they were read up to; then enforce the bounds.  Returns how many of the
        oldest records were dropped to make room."""
        rows = [(text, len(text.encode())) for text in records]
        with self._transaction():
            self.db.executemany("INSERT INTO records (body, size) VALUES (?, ?)", rows)
            if position is not None:
                self.db.execute("INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?)",
                                (position.path, position.device, position.inode, position.offset))  # fmt: skip
            return self._drop_oldest() if rows else 0

    def _drop_oldest(self) -> int:
        count, size = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM records").fetchone()
        if count <= self.limits.max_records and size <= self.limits.max_bytes:
            return 0
        doomed: list[int] = []
        for record_id, record_size in self.db.execute("SELECT id, size FROM records WHERE batch IS NULL ORDER BY id"):
            if count <= self.limits.max_records and size <= self.limits.max_bytes:
                break
            doomed.append(record_id)
            count -= 1
            size -= record_size
        self.db.executemany("DELETE FROM records WHERE id = ?", [(i,) for i in doomed])
        self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE name = 'dropped'", (len(doomed),))
        return len(doomed)

    def reject(self, body: str, *, code: str, detail: str) -> None:
        """Keep a record Sluice (or the intake) refused, with why, out of the way of the others."""
        self.db.execute("INSERT INTO rejected (body, code, detail, at) VALUES (?, ?, ?, ?)",
                        (body, code, detail, time.time()))  # fmt: skip

    def position(self, path: str) -> Position | None:
        row = self.db.execute("SELECT path, device, inode, offset FROM positions WHERE path = ?", (path,)).fetchone()
        return Position(*row) if row else None

    # -- batches ------------------------------------------------------------------------

    def batch_next(self, *, max_records: int | None = None) -> Batch | None:
        """The batch to send: the oldest one already formed (a retry: same records, same key),
        else a new one of the oldest records, written down before it is returned."""
        with self._transaction():
            row = self.db.execute("SELECT id, key FROM batches ORDER BY id LIMIT 1").fetchone()
            if row is not None:
                return self._load(row[0], row[1])
            limit = min(max_records or self.limits.batch_records, self.limits.batch_records)
            chosen: list[int] = []
            size = 0
            for record_id, record_size in self.db.execute(
                "SELECT id, size FROM records WHERE batch IS NULL ORDER BY id LIMIT ?", (limit,)
            ):
                if chosen and size + record_size + 1 > self.limits.batch_bytes:
                    break
                chosen.append(record_id)
                size += record_size + 1
            if not chosen:
                return None
            batch_id = self.db.execute("INSERT INTO batches (key, created) VALUES ('', ?)", (time.time(),)).lastrowid
            assert batch_id is not None
            key = f"sluice-agent-{self.agent_id}-{batch_id}"
            self.db.execute("UPDATE batches SET key = ? WHERE id = ?", (key, batch_id))
            self.db.executemany("UPDATE records SET batch = ? WHERE id = ?", [(batch_id, i) for i in chosen])
            return self._load(batch_id, key)

    def _load(self, batch_id: int, key: str) -> Batch:
        rows = self.db.execute("SELECT id, body FROM records WHERE batch = ? ORDER BY id", (batch_id,)).fetchall()
        return Batch(batch_id, key, tuple(r[0] for r in rows), tuple(r[1] for r in rows))

    def batch_acknowledge(self, batch: Batch) -> None:
        """Sluice wrote the batch: its records leave the buffer."""
        with self._transaction():
            self.db.execute("DELETE FROM records WHERE batch = ?", (batch.id,))
            self.db.execute("DELETE FROM batches WHERE id = ?", (batch.id,))

    def batch_dissolve(self, batch: Batch, *, rejected: dict[int, tuple[str, str]] | None = None) -> None:
        """Sluice refused the batch, so nothing of it was written and its key is spent: move the
        records named in ``rejected`` (index in the batch -> (code, detail)) aside, and put the
        others back at the head of the buffer, to be sent in a new batch under a new key."""
        rejected = rejected or {}
        with self._transaction():
            for index, (code, detail) in rejected.items():
                self.reject(batch.records[index], code=code, detail=detail)
                self.db.execute("DELETE FROM records WHERE id = ?", (batch.record_ids[index],))
            self.db.execute("UPDATE records SET batch = NULL WHERE batch = ?", (batch.id,))
            self.db.execute("DELETE FROM batches WHERE id = ?", (batch.id,))

    # -- what a person asks -------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        count, size = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM records").fetchone()
        return {
            "buffered": count,
            "buffered_bytes": size,
            "batches_in_flight": self.db.execute("SELECT count(*) FROM batches").fetchone()[0],
            "dropped": int(self.db.execute("SELECT value FROM meta WHERE name = 'dropped'").fetchone()[0]),
            "rejected": self.db.execute("SELECT count(*) FROM rejected").fetchone()[0],
        }

    def rejected_records(self) -> list[dict[str, object]]:
        rows = self.db.execute("SELECT body, code, detail, at FROM rejected ORDER BY id").fetchall()
        return [{"record": r[0], "code": r[1], "detail": r[2], "at": r[3]} for r in rows]

    def bodies(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT body FROM records ORDER BY id")]


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on an exception); nests as a no-op."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        if not self.outer:
            return
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")
