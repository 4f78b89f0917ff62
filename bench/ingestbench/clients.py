"""HTTPS clients: one thread per device certificate, spread over a few processes.

A minimal HTTP/1.1 client over ``ssl`` sockets (the request is built once; the response is
read by its Content-Length or chunks), so the clients spend as little of the shared cores
as Python allows.  Modes:

* ``keepalive``: one mTLS connection per device, requests back to back (reconnecting only
  when nginx ends the connection after ``keepalive_requests``);
* ``handshake``: a new TCP connection and a full mTLS handshake for every request
  (``Connection: close``; no session is reused: Python reuses none unless asked, and
  nginx keeps no session cache or tickets);
* ``paced``: keep-alive connections sending on a fixed schedule (``rate`` requests per
  second in total); latency is measured from the scheduled send time, so a late response
  also delays what the schedule says should have been sent (no coordinated omission).

Each process records (completion time, latency, status) per request and hands them back
when told to stop; the parent assigns them to windows by completion time.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import re
import socket
import ssl
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.ingestbench.windows import Window

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)
ERROR_STATUS = 0  # a request that got no HTTP answer (connection error, timeout)


def request_bytes(*, path: str, body: bytes, user_agent: str, host: str, close: bool) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode() + body


class Connection:
    """One TLS connection and its read buffer."""

    def __init__(self, context: ssl.SSLContext, host: str, port: int, server_hostname: str) -> None:
        raw = socket.create_connection((host, port), timeout=60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
        self.buffer = bytearray()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def exchange(self, request: bytes) -> tuple[int, bool, bytes]:
        """Send one request, read its response: (status, server closes, body)."""
        self.sock.sendall(request)
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(buffer[: end + 2])
        status = int(head[9:12])
        del buffer[: end + 4]
        if (length := _LENGTH.search(head)) is not None:
            size = int(length.group(1))
            while len(buffer) < size:
                self._fill()
            body = bytes(buffer[:size])
            del buffer[:size]
        elif _CHUNKED.search(head):
            body = self._chunks()
        else:
            body = b""
        return status, _CLOSE.search(head) is not None, body

    def _chunks(self) -> bytes:
        buffer, body = self.buffer, bytearray()
        while True:
            while (eol := buffer.find(b"\r\n")) < 0:
                self._fill()
            size = int(bytes(buffer[:eol]).split(b";")[0], 16)
            del buffer[: eol + 2]
            while len(buffer) < size + 2:
                self._fill()
            body += buffer[:size]
            del buffer[: size + 2]
            if size == 0:
                return bytes(body)


def tls_context(ca_file: str, chain: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(chain, key)
    return context


def one_request(
    *,
    host: str,
    port: int,
    server_hostname: str,
    ca_file: str,
    chain: str,
    key: str,
    body: bytes,
    path: str,
    user_agent: str,
) -> tuple[int, bytes]:
    conn = Connection(tls_context(ca_file, chain, key), host, port, server_hostname)
    try:
        status, _, payload = conn.exchange(
            request_bytes(path=path, body=body, user_agent=user_agent, host=server_hostname, close=True)
        )
        return status, payload
    finally:
        conn.close()


# -- the client processes --------------------------------------------------------------


def client_process(spec: dict[str, Any], stop: Any, ready: Any, results: Any) -> None:
    """One process: a thread per device certificate; returns its events through ``results``."""
    mode: str = spec["mode"]
    request = request_bytes(
        path=spec["path"],
        body=spec["body"],
        user_agent=spec["user_agent"],
        host=spec["server_hostname"],
        close=mode == "handshake",
    )
    per_thread_rate = spec["rate"] / spec["total_threads"] if mode == "paced" else 0.0
    lock = threading.Lock()
    done, latency, status = array("d"), array("d"), array("H")
    connects = [0]
    errors: Counter[str] = Counter()

    def run(index: int, chain: str, key: str) -> None:
        context = tls_context(spec["ca_file"], chain, key)
        my_done, my_latency, my_status = array("d"), array("d"), array("H")
        my_errors: Counter[str] = Counter()
        conn: Connection | None = None
        made = 0
        counted = False
        interval = 1.0 / per_thread_rate if per_thread_rate else 0.0
        # Stagger the threads of all processes evenly over one interval.
        scheduled = spec["start_at"] + interval * (spec["thread_offset"] + index) / spec["total_threads"]
        while not stop.value:
            if interval:
                wait = scheduled - time.time()
                if wait > 0:
                    time.sleep(wait)
                began = scheduled
                scheduled += interval
            else:
                began = time.time()
            try:
                if conn is None:
                    conn = Connection(context, spec["host"], spec["port"], spec["server_hostname"])
                    made += 1
                code, closing, _ = conn.exchange(request)
                if closing or mode == "handshake":
                    conn.close()
                    conn = None
            except (OSError, ValueError, ssl.SSLError) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                code = ERROR_STATUS
                my_errors[type(exc).__name__] += 1
                time.sleep(0.05)
            now = time.time()
            if code == 200 and not counted:
                counted = True
                with ready.get_lock():
                    ready.value += 1
            my_done.append(now)
            my_latency.append((now - began) * 1000)
            my_status.append(code)
        if conn is not None:
            conn.close()
        with lock:
            done.extend(my_done)
            latency.extend(my_latency)
            status.extend(my_status)
            connects[0] += made
            errors.update(my_errors)

    threads = [threading.Thread(target=run, args=(i, chain, key)) for i, (chain, key) in enumerate(spec["credentials"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put({"done": done, "latency": latency, "status": status, "connects": connects[0], "errors": dict(errors)})


@dataclass
class ClientLoad:
    """``len(credentials)`` connections over ``procs`` processes against one HTTPS port."""

    mode: str  # keepalive | handshake | paced
    host: str
    port: int
    server_hostname: str
    ca_file: str
    credentials: list[tuple[str, str]]
    body: bytes
    records_per_request: int
    user_agent: str
    procs: int = 2
    rate: float = 0.0  # paced: requests per second over all connections
    path: str = "/ingest/v1/records"

    def __post_init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.RawValue("b", 0)
        self._ready = ctx.Value("i", 0)
        self._results = ctx.Queue()
        self._ctx = ctx
        self._processes: list[Any] = []
        self._events: list[dict[str, Any]] = []

    def start(self) -> None:
        groups = [self.credentials[i :: self.procs] for i in range(self.procs)]
        start_at = time.time() + 1.0
        offset = 0
        for group in groups:
            if not group:
                continue
            spec = {
                "mode": self.mode,
                "host": self.host,
                "port": self.port,
                "server_hostname": self.server_hostname,
                "ca_file": self.ca_file,
                "credentials": group,
                "body": self.body,
                "path": self.path,
                "user_agent": self.user_agent,
                "rate": self.rate,
                "start_at": start_at,
                "thread_offset": offset,
                "total_threads": len(self.credentials),
            }
            offset += len(group)
            process = self._ctx.Process(
                target=client_process, args=(spec, self._stop, self._ready, self._results), daemon=True
            )
            process.start()
            self._processes.append(process)
        # Started = every connection has had its first 200 (TLS up, caches warm).
        deadline = time.monotonic() + 90
        while self._ready.value < len(self.credentials):
            if time.monotonic() > deadline or not all(p.is_alive() for p in self._processes):
                self.stop()
                raise RuntimeError(f"only {self._ready.value} of {len(self.credentials)} connections got a 200")
            time.sleep(0.1)

    def pids(self) -> set[int]:
        """The client processes (roots: their CPU is counted with their children's)."""
        return {p.pid for p in self._processes if p.pid}

    def mark(self) -> None:
        return None

    def stop(self) -> None:
        self._stop.value = 1
        for _ in self._processes:
            try:
                self._events.append(self._results.get(timeout=120))
            except queue.Empty:
                break
        for process in self._processes:
            process.join(timeout=30)

    @property
    def connects(self) -> int:
        return sum(e["connects"] for e in self._events)

    def tally(self, window: Window) -> dict[str, Any]:
        ok = 0
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        for events in self._events:
            for when, ms, code in zip(events["done"], events["latency"], events["status"], strict=True):
                if window.start <= when < window.end:
                    statuses[code] += 1
                    if code == 200:
                        ok += 1
                        latencies.append(ms)
        return {
            "requests": ok,
            "records": ok * self.records_per_request,
            "latencies": latencies,
            "statuses": dict(statuses),
        }
