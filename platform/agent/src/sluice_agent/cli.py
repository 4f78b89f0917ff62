"""``sluice-agent run``: read JSON lines, buffer them on disk, forward them to Sluice.
``sluice-agent status``: what the buffer holds, what was dropped, what Sluice refused.

Exit status: 0 done (``--drain``: the input ended and every record was acknowledged, or a
signal), 1 the input could not be read, 2 bad arguments, 3 Sluice refuses the agent's identity
(the records stay buffered)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from sluice_agent.buffer import Buffer, Limits
from sluice_agent.forward import Forwarder, Stop
from sluice_agent.sources import FileFollower, read_stream, serve_socket
from sluice_agent.transport import Credentials, Sender, Sluice

log = logging.getLogger("sluice_agent")
BUFFER_FILE = "buffer.sqlite3"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="sluice-agent", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="forward records to Sluice")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--stdin", action="store_true", help="read JSON lines from standard input")
    source.add_argument("--file", type=Path, help="follow this file (like tail -F), resuming where it left off")
    source.add_argument("--socket", type=Path, help="listen on this Unix socket for JSON lines")
    run.add_argument("--url", required=True, help="Sluice's web listener, e.g. https://sluice.example:8443")
    run.add_argument(
        "--mqtt",
        metavar="HOST:PORT",
        help="send records over MQTT to Sluice's Mosquitto (8883 with --cert, 8884 with --client-id; "
        "needs paho-mqtt: pip install 'sluice-agent[mqtt]'); --url still serves EST and tokens",
    )
    run.add_argument("--ca", type=Path, required=True, help="the platform root CA (PEM) to trust")
    run.add_argument("--cert", type=Path, help="the device certificate chain (PEM: certificate + tenant CA)")
    run.add_argument("--key", type=Path, help="the device's private key (PEM, unencrypted)")
    run.add_argument("--client-id", help="an OAuth2 device client (instead of a certificate)")
    run.add_argument("--client-secret-file", type=Path,
                     help="a file holding the client's secret (or set SLUICE_AGENT_CLIENT_SECRET)")  # fmt: skip
    run.add_argument("--state", type=Path, required=True, help="the agent's state directory (its buffer)")
    run.add_argument("--max-records", type=int, default=Limits.max_records, help="buffer bound in records")
    run.add_argument("--max-bytes", type=int, default=Limits.max_bytes, help="buffer bound in bytes")
    run.add_argument("--batch-records", type=int, default=Limits.batch_records, help="records per request (<= 500)")
    run.add_argument("--renew-before", type=float, metavar="SECONDS",
                     help="renew the certificate over EST when less than this is left (default: a third of its "
                          "lifetime)")  # fmt: skip
    run.add_argument("--drain", action="store_true",
                     help="exit once the input is at its end (stdin closed, the file read to its end) and every "
                          "record is acknowledged")  # fmt: skip
    run.add_argument("--verbose", action="store_true", help="log each batch sent")
    status = commands.add_parser("status", help="print the buffer's counts and the rejected records (JSON)")
    status.add_argument("--state", type=Path, required=True)
    return top


def credentials(args: argparse.Namespace) -> Credentials:
    if args.client_id:
        if args.cert or args.key:
            raise ValueError("give a certificate (--cert, --key) or a client (--client-id), not both")
        secret = (args.client_secret_file.read_text().strip() if args.client_secret_file
                  else os.environ.get("SLUICE_AGENT_CLIENT_SECRET"))  # fmt: skip
        if not secret:
            raise ValueError("--client-id needs --client-secret-file or SLUICE_AGENT_CLIENT_SECRET")
        return Credentials(ca=args.ca, client_id=args.client_id, client_secret=secret)
    if not args.cert or not args.key:
        # (the key in a file of its own: a renewal rewrites the certificate file, never the key)
        raise ValueError("give --cert and --key, or --client-id")
    return Credentials(ca=args.ca, cert=args.cert, key=args.key)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="sluice-agent: %(levelname)s %(message)s")  # fmt: skip
    try:
        limits = Limits(max_records=args.max_records, max_bytes=args.max_bytes, batch_records=args.batch_records)
        https = Sluice(args.url, credentials(args))
        sluice: Sender = https
        if args.mqtt:
            from sluice_agent.mqtt import MqttSluice

            sluice = MqttSluice(args.mqtt, https)
    except (ValueError, OSError, ImportError) as exc:
        print(f"sluice-agent: {exc}", file=sys.stderr)
        return 2
    path = args.state / BUFFER_FILE

    def open_buffer() -> Buffer:
        return Buffer(path, limits)

    stop = threading.Event()
    input_done = threading.Event()
    input_failed = threading.Event()

    def on_signal(number: int, _: FrameType | None) -> None:
        log.warning("signal %d: stopping (the buffer keeps what was not acknowledged)", number)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # The sender's connection first: it creates the file and switches it to WAL, which needs
    # the file to itself (two threads doing it at once: "database is locked").
    buffer = open_buffer()
    intake = _intake(args, open_buffer, stop, input_done, input_failed)
    thread = threading.Thread(target=intake, name="intake", daemon=True)
    thread.start()
    renew_before = dt.timedelta(seconds=args.renew_before) if args.renew_before is not None else None
    forwarder = Forwarder(buffer, sluice, renew_before=renew_before)
    try:
        forwarder.run(stop, input_done if args.drain else None)
    except Stop as exc:
        print(f"sluice-agent: {exc}", file=sys.stderr)
        return 3
    finally:
        stop.set()
        sluice.close()
    if input_failed.is_set():
        return 1
    stats = buffer.stats()
    if stats["dropped"] or stats["rejected"]:
        print(f"sluice-agent: {stats['dropped']} records dropped (buffer full), {stats['rejected']} rejected "
              f"(sluice-agent status --state {args.state})", file=sys.stderr)  # fmt: skip
    return 0


def _intake(args: argparse.Namespace, open_buffer: Callable[[], Buffer], stop: threading.Event,
            input_done: threading.Event, input_failed: threading.Event) -> Callable[[], None]:  # fmt: skip
    def intake() -> None:
        buffer: Buffer | None = None
        try:
            buffer = open_buffer()
            if args.stdin:
                read_stream(sys.stdin.fileno(), buffer, stop)
                input_done.set()
            elif args.file:
                follower = FileFollower(args.file, buffer)

                def watch() -> None:
                    follower.at_end.wait()
                    input_done.set()

                threading.Thread(target=watch, daemon=True).start()
                follower.run(stop)
            else:
                serve_socket(args.socket, open_buffer, stop)
        except Exception:
            log.exception("reading the input failed; stopping (the buffer keeps what was read)")
            input_failed.set()
            stop.set()
            raise
        finally:
            if buffer is not None:
                buffer.close()

    return intake


def status(args: argparse.Namespace) -> int:
    path = args.state / BUFFER_FILE
    if not path.exists():
        print(f"sluice-agent: no buffer at {path}", file=sys.stderr)
        return 2
    buffer = Buffer(path)
    print(json.dumps({**buffer.stats(), "rejected_records": buffer.rejected_records()}))
    buffer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(args) if args.command == "run" else status(args)


if __name__ == "__main__":
    sys.exit(main())
