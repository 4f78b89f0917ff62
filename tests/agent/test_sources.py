"""The agent's inputs: JSON lines; a followed file resumes at the byte after the last line it
stored, across restarts, and follows rotation and truncation as tail -F does."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from sluice_agent.buffer import Buffer
from sluice_agent.sources import FileFollower, parse_lines, read_stream, serve_socket


def follow_until_idle(path: Path, buffer: Buffer, expected: int) -> None:
    """Run a follower until the buffer holds ``expected`` records (plus what was rejected)."""
    stop = threading.Event()
    follower = FileFollower(path, buffer, poll=0.01)
    thread = threading.Thread(target=follower.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while len(buffer.bodies()) + buffer.stats()["rejected"] < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    follower.at_end.wait(10)
    stop.set()
    thread.join(10)


def ns(buffer: Buffer) -> list[int]:
    return [json.loads(b)["n"] for b in buffer.bodies()]


def test_a_restarted_follower_resumes_after_the_last_line_it_stored(tmp_path: Path) -> None:
    # given a file of three lines and a partial fourth, read by an agent that then stops
    log = tmp_path / "readings.ndjson"
    log.write_text('{"n": 0}\n{"n": 1}\n{"n": 2}\n{"n": ')
    state = tmp_path / "b.sqlite3"
    first = Buffer(state)
    follow_until_idle(log, first, 3)
    assert ns(first) == [0, 1, 2]
    first.close()

    # when the line is completed and more are written while the agent is down, and it starts again
    with log.open("a") as handle:
        handle.write('3}\n{"n": 4}\n')
    again = Buffer(state)
    follow_until_idle(log, again, 5)

    # then every line is in the buffer exactly once
    assert ns(again) == [0, 1, 2, 3, 4]


def test_a_rotated_file_is_finished_and_the_new_one_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "readings.ndjson"
    log.write_text('{"n": 0}\n')
    buffer = Buffer(tmp_path / "b.sqlite3")
    stop = threading.Event()
    follower = FileFollower(log, buffer, poll=0.01)
    thread = threading.Thread(target=follower.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(buffer.bodies()) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        # when a line is appended and the file rotated at once (logrotate's create mode)
        with log.open("a") as handle:
            handle.write('{"n": 1}\n')
        os.rename(log, tmp_path / "readings.ndjson.1")
        log.write_text('{"n": 2}\n{"n": 3}\n')
        while len(buffer.bodies()) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
    # then the old file's last line and the whole new file are there, once each
    assert ns(buffer) == [0, 1, 2, 3]


def test_a_truncated_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "readings.ndjson"
    log.write_text('{"n": 0}\n{"n": 1}\n')
    state = tmp_path / "b.sqlite3"
    first = Buffer(state)
    follow_until_idle(log, first, 2)
    first.close()
    # when the file is emptied and written again while the agent is down
    with log.open("r+") as handle:
        handle.truncate(0)
    log.write_text('{"n": 2}\n')
    again = Buffer(state)
    follow_until_idle(log, again, 3)
    assert ns(again) == [0, 1, 2]


def test_lines_that_are_not_json_objects_are_kept_aside(tmp_path: Path) -> None:
    records, refused = parse_lines(b'{"n": 1}\n\nnot json\n[1, 2]\n  {"n": 2}  ')
    assert records == ['{"n": 1}', '{"n": 2}']
    assert [(text, code) for text, code, _ in refused] == [("not json", "malformed_json"), ("[1, 2]", "invalid_shape")]


def test_a_stream_is_stored_line_by_line_and_its_last_line_at_its_end(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.write(write, b'{"n": 0}\n{"n": 1}\nbroken\n{"n": 2}')
    os.close(write)
    buffer = Buffer(tmp_path / "b.sqlite3")
    read_stream(read, buffer, threading.Event())
    os.close(read)
    assert ns(buffer) == [0, 1, 2]
    assert buffer.stats()["rejected"] == 1


def test_a_unix_socket_takes_lines_from_each_connection(tmp_path: Path) -> None:
    # given the agent listening on a socket
    path = tmp_path / "agent.sock"
    state = tmp_path / "b.sqlite3"
    stop = threading.Event()
    thread = threading.Thread(target=serve_socket, args=(path, lambda: Buffer(state), stop))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        # when two programs write to it
        for text in (b'{"n": 0}\n{"n": 1}\n', b'{"n": 2}\n'):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))
                client.sendall(text)
        buffer = Buffer(state)
        while len(buffer.bodies()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        # then every line is buffered
        assert sorted(ns(buffer)) == [0, 1, 2]
    finally:
        stop.set()
        thread.join(10)
    assert not path.exists()
