"""``kill -9`` and restart of the broker a launcher started (today's single broker).

The broker runs as the launcher's ``kafka`` component, in its own process group (the
supervisor's ``start_new_session``), so a kill reaches the JVM and nothing else.  A restart
starts the same command line again (``sluicectl.components.KafkaBroker`` node 1: the rendered
``server.properties`` and the kept log directory), as a child of whoever restarts it, and
waits until the broker answers the launcher's own health check (both client listeners open,
metadata for the admin principal).

The owner of the restarted process stops it (``stop``): in ``sluice test`` the launcher's
record of the broker is the killed process, so the fixture that restarted it stops it at
the end of the session; ``bench/faults.py`` hands it back to its launcher."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluicectl.components import BROKERS, Context, KafkaBroker
from sluicectl.supervisor import Process

RESTART_TIMEOUT = 120.0  # the launcher's own start-up bound for Kafka


def _broker_one() -> KafkaBroker:
    """The single broker's component (node 1, the launcher's ``kafka``)."""
    return BROKERS[0]


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie (its parent, the launcher, reaps it only when it
    next looks, which in ``sluice test`` is after pytest)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


@dataclass
class Outage:
    """One kill and restart, in wall-clock seconds."""

    killed_at: float
    restarted_at: float = 0.0
    ready_at: float = 0.0

    @property
    def down_seconds(self) -> float:
        return self.ready_at - self.killed_at


@dataclass
class SingleBroker:
    """The platform's one broker: ``pid`` is its process (group) now."""

    ctx: Context
    pid: int
    process: Process | None = None  # set once restarted here
    outages: list[Outage] = field(default_factory=list)

    @classmethod
    def of_running_launcher(cls, ctx: Context) -> SingleBroker:
        """The broker a launcher of ``ctx``'s state directory started (its state file)."""
        state = json.loads((ctx.runtime.run_dir / "launcher.json").read_text())
        return cls(ctx, int(state["components"]["kafka"]))

    def kill(self, timeout: float = 15.0) -> Outage:
        """SIGKILL the broker's process group; returns once it is gone."""
        outage = Outage(killed_at=time.time())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while not _gone(self.pid):
            if self.process is not None and self.process.popen is not None:
                self.process.popen.poll()  # reap our own child
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker (pid {self.pid}) was still alive {timeout:.0f} s after SIGKILL")
            time.sleep(0.05)
        self.outages.append(outage)
        return outage

    def restart(self, timeout: float = RESTART_TIMEOUT) -> Outage:
        """Start the broker again and wait until it answers (bounded by ``timeout``)."""
        outage = self.outages[-1] if self.outages else Outage(killed_at=time.time())
        component = _broker_one()
        process = component.process(self.ctx)
        process.start()
        assert process.pid is not None
        self.process, self.pid = process, process.pid
        return _answering(component, self.ctx, process, outage, timeout, "the restarted broker")

    @property
    def down(self) -> bool:
        """Killed here and not (successfully) started again."""
        return _gone(self.pid)

    def stop(self) -> None:
        """Stop a broker restarted here (SIGTERM, then SIGKILL after the launcher's bound)."""
        if self.process is not None:
            self.process.stop(timeout=KafkaBroker.stop_timeout)


@dataclass
class LauncherBrokers:
    """The brokers a launcher in this process started (one, or a quorum of three): ``kill -9``
    and restart by node id, the restarted process handed back to the launcher's table (so its
    stop stops it), and where the partition leaders and the active controller are."""

    ctx: Context
    processes: dict[str, Process]  # the launcher's own table, by component name
    outages: list[Outage] = field(default_factory=list)

    def _process(self, node: int) -> Process:
        return self.processes[BROKERS[node - 1].name]

    def kill(self, node: int, timeout: float = 30.0) -> Outage:
        process = self._process(node)
        outage = Outage(killed_at=time.time())
        if process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if process.popen is not None:
            process.popen.wait(timeout=timeout)
        self.outages.append(outage)
        return outage

    def restart(self, node: int, outage: Outage, timeout: float = RESTART_TIMEOUT) -> Outage:
        component = BROKERS[node - 1]
        process = component.process(self.ctx)
        process.start()
        self.processes[component.name] = process
        return _answering(component, self.ctx, process, outage, timeout, f"the restarted broker {node}")

    def _metadata(self, topic: str) -> Any:
        from confluent_kafka.admin import AdminClient

        from ingest.kafka import admin_config

        return AdminClient(admin_config(self.ctx.runtime)).list_topics(topic, timeout=10).topics[topic]

    def leader(self, topic: str, partition: int = 0) -> int:
        return int(self._metadata(topic).partitions[partition].leader)

    def all_in_sync(self, topic: str) -> bool:
        nodes = sorted(self.ctx.runtime.kafka_nodes)
        return all(sorted(p.isrs) == nodes for p in self._metadata(topic).partitions.values())

    def active_controller(self) -> int:
        """The KRaft quorum's leader (DescribeQuorum, KIP-595), through kafka-python: Kafka's
        Metadata answer names a random live broker as "controller" under KRaft (KIP-590)."""
        from kafka.admin import KafkaAdminClient

        from ingest.kafka import admin_files

        files = admin_files(self.ctx.runtime)
        client = KafkaAdminClient(bootstrap_servers=self.ctx.runtime.kafka_bootstrap, security_protocol="SSL",
                                  ssl_cafile=files.ca, ssl_certfile=files.cert, ssl_keyfile=files.key,
                                  request_timeout_ms=10_000)  # fmt: skip
        try:
            quorum = client.describe_metadata_quorum()
        finally:
            client.close()
        return int(quorum["topics"][0]["partitions"][0]["leader_id"])


def _answering(component: KafkaBroker, ctx: Context, process: Process, outage: Outage, timeout: float,
               who: str) -> Outage:  # fmt: skip
    """Wait (bounded by ``timeout``) until a just-started broker answers; mark ``outage`` ready."""
    outage.restarted_at = time.time()
    deadline = time.monotonic() + timeout
    reason: str | None = "not checked yet"
    while time.monotonic() < deadline:
        code = process.exit_code()
        if code is not None:
            raise RuntimeError(f"{who} exited with status {code}; see {process.log_path}")
        reason = component.check(ctx)
        if reason is None:
            outage.ready_at = time.time()
            return outage
        time.sleep(0.5)
    raise RuntimeError(f"{who} did not answer within {timeout:.0f} s ({reason})")
