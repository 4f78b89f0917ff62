"""Where records come from: stdin, a followed file (like ``tail -F``, resuming where it left off
after a restart) or a local Unix socket.  Every source reads JSON lines, one object per line,
and stores complete lines only; a line that is not a JSON object is kept aside in the buffer's
``rejected`` table (code ``malformed_json`` or ``invalid_shape``), never sent."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sluice_agent.buffer import Buffer, Limits, Position

log = logging.getLogger("sluice_agent")
CHUNK = 64 * 1024
# A record larger than one batch could never be sent (ingest takes 1 MiB per request).
MAX_RECORD_BYTES = Limits().batch_bytes


def parse_lines(data: bytes) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Complete lines of ``data`` -> (records to buffer, (text, code, detail) to reject).
    Blank lines are skipped."""
    records: list[str] = []
    refused: list[tuple[str, str, str]] = []
    for raw in data.split(b"\n"):
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            continue
        if len(text.encode()) > MAX_RECORD_BYTES:
            refused.append((text[:1000], "record_too_large", f"{len(text.encode())} bytes"))
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            refused.append((text, "malformed_json", str(exc)))
            continue
        if not isinstance(value, dict):
            refused.append((text, "invalid_shape", "a record is a JSON object"))
            continue
        records.append(text)
    return records, refused


def store(buffer: Buffer, data: bytes, position: Position | None = None) -> None:
    """Buffer the complete lines of ``data`` (with the position they reach, atomically)."""
    records, refused = parse_lines(data)
    for text, code, detail in refused:
        log.error("input line refused (%s: %s), kept in the rejected table: %.200s", code, detail, text)
        buffer.reject(text, code=code, detail=detail)
    dropped = buffer.add(records, position)
    if dropped:
        stats = buffer.stats()
        log.warning("buffer full: dropped the %d oldest records (%d dropped in all; holding %d records, %d bytes)",
                    dropped, stats["dropped"], stats["buffered"], stats["buffered_bytes"])  # fmt: skip


def read_stream(fileno: int, buffer: Buffer, stop: threading.Event) -> None:
    """Read a pipe or socket to its end, storing each complete line as it arrives."""
    pending = b""
    while not stop.is_set():
        chunk = os.read(fileno, CHUNK)
        if not chunk:
            break
        pending += chunk
        complete, _, pending = pending.rpartition(b"\n")
        if complete:
            store(buffer, complete)
    if pending.strip():
        store(buffer, pending)  # the last line had no newline; the stream is over, so it is whole


class FileFollower:
    """Follow ``path`` as ``tail -F`` does: read to its end, then wait for more; when the path
    names a new file (rotated: another inode) finish the old one and start the new one at 0; when
    the file shrinks (truncated), start again at 0.  The offset after the last complete line is
    stored with the lines, in one transaction, so a restart resumes exactly there: no line is
    read twice or skipped.  A partial last line waits for its newline."""

    def __init__(self, path: Path, buffer: Buffer, *, poll: float = 0.2) -> None:
        self.path = path
        self.key = str(path.resolve())
        self.buffer = buffer
        self.poll = poll
        self.at_end = threading.Event()  # everything written so far is in the buffer

    def run(self, stop: threading.Event) -> None:
        handle: BinaryIO | None = None
        position: Position | None = None
        while not stop.is_set():
            if handle is None:
                handle, position = self._open()
                if handle is None:
                    self.at_end.set()  # no file (yet): nothing to read
                    stop.wait(self.poll)
                    continue
            assert position is not None
            handle.seek(position.offset)
            data = handle.read(CHUNK)
            complete, newline, _ = data.rpartition(b"\n")
            if newline:
                position = Position(position.path, position.device, position.inode,
                                    position.offset + len(complete) + 1)  # fmt: skip
                store(self.buffer, complete, position)
                continue
            if self._replaced(position):
                handle.close()
                handle = None
                continue
            self.at_end.set()
            stop.wait(self.poll)
        if handle is not None:
            handle.close()

    def _open(self) -> tuple[BinaryIO, Position] | tuple[None, None]:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return None, None
        stat = os.fstat(handle.fileno())
        stored = self.buffer.position(self.key)
        if stored is not None and (stored.device, stored.inode) == (stat.st_dev, stat.st_ino):
            offset = stored.offset if stored.offset <= stat.st_size else 0
        else:
            offset = 0  # a file this agent has not read yet
        if stored is None or offset != stored.offset or (stored.device, stored.inode) != (stat.st_dev, stat.st_ino):
            self.buffer.add([], Position(self.key, stat.st_dev, stat.st_ino, offset))
        log.info("following %s from byte %d", self.path, offset)
        return handle, Position(self.key, stat.st_dev, stat.st_ino, offset)

    def _replaced(self, position: Position) -> bool:
        """At the end of the open file: has the path moved on to another file, or shrunk?"""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False  # rotated away and not yet recreated: keep waiting
        if (stat.st_dev, stat.st_ino) != (position.device, position.inode):
            log.info("%s was rotated: following the new file", self.path)
            return True
        if stat.st_size < position.offset:
            log.info("%s was truncated: reading it again from the start", self.path)
            return True
        return False


def serve_socket(path: Path, open_buffer: Callable[[], Buffer], stop: threading.Event) -> None:
    """Listen on a Unix socket: each connection writes JSON lines, stored as they arrive."""
    if path.exists():
        path.unlink()  # a socket left by a previous run
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o660)
    server.listen(16)
    server.settimeout(0.5)
    log.info("listening on %s", path)

    def handle(connection: socket.socket) -> None:
        buffer = open_buffer()
        try:
            with connection:
                read_stream(connection.fileno(), buffer, stop)
        finally:
            buffer.close()

    try:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.settimeout(None)
            threading.Thread(target=handle, args=(connection,), daemon=True).start()
    finally:
        server.close()
        path.unlink(missing_ok=True)
