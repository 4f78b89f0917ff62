"""sluice-agent's command line: arguments it cannot work with are refused with exit status 2
and a sentence saying why, before anything is read or sent."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sluice_agent.cli import main


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (["--cert", "c.pem"], "give --cert and --key, or --client-id"),
        (["--client-id", "sc_1"], "--client-id needs --client-secret-file or SLUICE_AGENT_CLIENT_SECRET"),
        (["--cert", "c.pem", "--key", "k.pem", "--batch-records", "501"], "between 1 and 500"),
        (["--cert", "c.pem", "--key", "k.pem", "--max-records", "10"], "at least one batch"),
    ],
)
def test_unusable_arguments_are_refused_with_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, options: list[str], why: str
) -> None:
    monkeypatch.delenv("SLUICE_AGENT_CLIENT_SECRET", raising=False)
    code = main(["run", "--stdin", "--url", "https://127.0.0.1:1", "--ca", str(tmp_path / "ca.pem"),
                 "--state", str(tmp_path / "state"), *options])  # fmt: skip
    assert code == 2
    assert why in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_only_https_is_spoken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--stdin", "--url", "http://127.0.0.1:8080", "--ca", str(tmp_path / "ca.pem"),
                 "--state", str(tmp_path / "state"), "--client-id", "c", "--client-secret-file", __file__])  # fmt: skip
    assert code == 2
    assert "--url must be https://" in capsys.readouterr().err


def test_an_intake_that_cannot_open_the_buffer_stops_the_agent_instead_of_hanging(tmp_path: Path) -> None:
    # The clean-clone run once saw "database is locked" in the intake thread's open, which
    # left the agent waiting for input that would never come.
    import argparse
    import threading

    from sluice_agent.cli import _intake

    def locked() -> Any:
        raise sqlite3.OperationalError("database is locked")

    stop, done, failed = threading.Event(), threading.Event(), threading.Event()
    intake = _intake(argparse.Namespace(stdin=True, file=None, socket=None), locked, stop, done, failed)
    with pytest.raises(sqlite3.OperationalError):
        intake()
    assert failed.is_set()
    assert stop.is_set()


def test_two_connections_opening_a_new_buffer_at_once_both_work(tmp_path: Path) -> None:
    import threading

    from sluice_agent.buffer import Buffer

    path = tmp_path / "buffer.sqlite3"
    errors: list[BaseException] = []
    opened: list[Buffer] = []

    def open_one() -> None:
        try:
            opened.append(Buffer(path))
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    Buffer(path).close()  # the sender's connection first, as the command does
    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(opened) == 4
    for buffer in opened:
        buffer.close()
