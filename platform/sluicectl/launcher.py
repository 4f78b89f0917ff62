"""Bring a set of components up in order, keep them running (a component that exits is
started again after a growing pause while the others keep serving), and take them all down
again on Ctrl-C or ``sluice down``.

Supervision is the launcher's own loop rather than a kept supervisor (supervisord): it
restarts a process that ran and died after a pause as well (supervisord restarts it at once
and pauses only between failed starts, then gives up for good: FATAL), it asks the same
health checks as the first start before it calls a part back, and it redoes each part's
preparation (stale sockets, beat's pid file, rendered configuration) before every start,
with the state file, lock, logs and process groups it already owns."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from certs.crl_files import bundle_path, follow_nginx_inputs
from certs.platform_pki import root_fingerprint
from config.env import BASE_DIR, DEVELOPMENT, POSTGRES, ConfigurationError, Runtime, load_runtime
from config.logs import json_file_handler
from sluicectl.components import ALL, BROKERS, NODE_NEEDS, Component, Context, platform_health, prometheus_url
from sluicectl.errors import LaunchError
from sluicectl.private_state import make_state_dir, open_public_paths, refuse_open_state
from sluicectl.supervisor import Process, RestartPolicy, describe_exit, last_error

# Start order; stop is the reverse.  Only Redis, PostgreSQL (when started) and nginx are
# waited for before the next one starts: Kafka and the registry are JVMs that take a while,
# and migrations run meanwhile.  With web and nginx, the last wait reads /healthz, which covers the database, Kafka, the
# registry, the Celery worker and beat: "ready" means the whole platform answers.
ORDER = (
    "redis", "postgres", "nginx", *(broker.name for broker in BROKERS), "registry", "web", "ingest", "mqtt-auth",
    "mosquitto", "mqtt-bridge", "worker", "beat", "prometheus",
)  # fmt: skip
# nginx serves the CRLs the broker checks every TLS peer against, and the token-signing
# JWKS the broker's OAUTHBEARER listener fetches while it starts (Nginx.prepare creates
# the first signing key and publishes the JWKS), so it comes first.
WAIT_BEFORE_NEXT = {"redis", "postgres", "nginx"}
# What reads or writes the database: with SLUICE_DATABASE=postgres, the PostgreSQL the launcher
# starts comes with any of them (and is waited for: the web app migrates it while preparing).
USES_DATABASE = {"web", "ingest", "worker", "beat", "mqtt-auth", "mqtt-bridge"}
# What another web node (``sluice up --node web2``) may run: its own nginx, web app and ingest
# workers, and Celery workers if wanted.  Redis, Kafka and the registry are the platform's,
# and Celery beat must run exactly once (two would send every periodic task twice).
NODE_COMPONENTS = ("nginx", "web", "ingest", "worker")
DEFAULT_NODE_COMPONENTS = ("nginx", "web", "ingest")
PLATFORM_TIMEOUT = 90.0
# How often the watching launcher looks at its children, and how often it asks a restarted
# one whether it answers yet.
WATCH_INTERVAL = 0.5
CHECK_INTERVAL = 1.0

# A supervised component is in one of these states (``sluice status``, /healthz).
STARTING = "starting"  # its process runs, its health check does not pass yet
RUNNING = "running"
RESTARTING = "restarting"  # it exited; waiting out the backoff before the next start


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    env["PYTHONPATH"] = f"{BASE_DIR}{os.pathsep}{BASE_DIR / 'platform'}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def fresh_metrics_dir(ctx: Context) -> Path:
    """The node's prometheus-client multiprocess directory (config.instruments), created empty
    at each start (counters start from zero with the processes, as Prometheus expects) and
    named to every process this launcher starts through ``PROMETHEUS_MULTIPROC_DIR``."""
    directory = ctx.runtime.run_dir / "prometheus"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    ctx.env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def make_context(env: dict[str, str]) -> Context:
    try:
        return Context(runtime=load_runtime(env), env=env)
    except ConfigurationError as exc:
        raise LaunchError(str(exc)) from None


# The launcher's own log: what it says on the terminal, as JSON lines in <state>/logs/launcher.log
# (config.logs), once a launcher owns the state directory (log_to); nowhere before that, and
# never in the commands that only ask (status, stop).
log = logging.getLogger("sluice.launcher")
log.propagate = False
log.setLevel(logging.INFO)
log.addHandler(logging.NullHandler())


def log_to(logs_dir: Path) -> None:
    for handler in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(handler)
        handler.close()
    log.addHandler(json_file_handler(str(logs_dir / "launcher.log")))


def say(message: str, level: int = logging.INFO) -> None:
    """A line for whoever watches the terminal, and the same in the launcher's log."""
    print(f"sluice: {message}", flush=True)
    log.log(level, message)


def manage_command(runtime: Runtime, *args: str) -> str:
    """A ``manage.py`` command line that works as printed from the checkout's root, aimed at
    ``runtime``'s platform: the virtualenv's Python (a bare ``python`` lacks Django), and the
    environment and state directory when they are not the defaults.  Secrets (DATABASE_URL,
    the production keys) are never printed: whoever started the platform has them set."""
    words = []
    if runtime.environment != DEVELOPMENT:
        words.append(f"SLUICE_ENV={runtime.environment}")
    if runtime.state_dir != (BASE_DIR / "var" / "data").resolve():
        words.append(f"SLUICE_STATE_DIR={shlex.quote(str(runtime.state_dir))}")
    if runtime.starts_postgres:
        # (--db postgres: without it, the command would open an empty SQLite database)
        words.append(f"SLUICE_DATABASE={POSTGRES}")
    return " ".join([*words, ".venv/bin/python", "manage.py", *(shlex.quote(arg) for arg in args)])


def banner(ctx: Context, names: Sequence[str]) -> list[str]:
    """What ``sluice up`` prints once the platform answers.  Every command in it is in
    backticks and runs as written from the checkout's root (tests/platform runs them)."""
    rt = ctx.runtime
    lines = []
    if rt.node and "nginx" in names:
        host = rt.public_hostnames[0]
        return [
            f"  Node {rt.node:<10} https://{host}:{rt.listen.web}/  (console, REST API, ingest; "
            f"health: https://{host}:{rt.listen.web}/healthz)",
            f"  CRLs, JWKS      http://{host}:{rt.listen.crl}/crl/, /oauth/jwks.json",
            f"  Platform        {rt.web_url}/ (the first node; its URLs are the platform's: token issuer, "
            f"CRL distribution points)",
        ]
    if "nginx" in names:
        root_ca = shlex.quote(str(ctx.pki.root_cert))
        lines += [
            f"  Admin UI        {rt.web_url}/admin/",
            f"  REST API        {rt.web_url}/api/v1/  (docs: {rt.web_url}/api/docs/; "
            f"a token: `{manage_command(rt, 'sluice_token', 'admin')}`)",
            f"  Health          {rt.web_url}/healthz",
            f"  OAuth2 tokens   {rt.web_url}/oauth/token  (keys: {rt.jwks_url})",
            f"  Tenant schemas  {rt.web_url}/registry/<tenant>/  (Confluent API, read-only, for tenant backends)",
            f"  CA certificate  {ctx.pki.root_cert}  (trust it: `curl --cacert {root_ca} {rt.web_url}/healthz`; "
            f"download: {rt.root_ca_url})",
        ]
        if ctx.pki.root_cert.exists():  # nginx's prepare makes it; compare it with the download
            lines.append(f"  CA fingerprint  SHA-256 {root_fingerprint(ctx.pki.root_cert.read_bytes())}")
    if "kafka" in names or not rt.runs_kafka:
        where = "" if rt.runs_kafka else "  (external: Sluice does not start it)"
        lines.append(f"  Kafka (mTLS)    {rt.kafka_bootstrap}{where}")
        if rt.kafka_oauth_bootstrap:
            lines.append(f"  Kafka (OAuth)   {rt.kafka_oauth_bootstrap}  (SASL_SSL, OAUTHBEARER)")
    if not rt.runs_registry:
        lines.append(f"  Schema Registry {rt.registry_url}  (external: Sluice does not start it)")
    elif "registry" in names:
        lines.append(f"  Schema Registry unix:{rt.registry_socket}  (Confluent API; Sluice's user only)")
    if "redis" in names:
        lines.append(f"  Redis           127.0.0.1:{rt.ports.redis}")
    if "mosquitto" in names and rt.is_first_node:
        lines.append(f"  MQTT (mTLS)     mqtts://{rt.public_hostnames[0]}:{rt.ports.mqtt}  (topic "
                     f"sluice/<tenant>/<group>/<device>/records; off with --no-mqtt)")  # fmt: skip
        lines.append(
            f"  MQTT (token)    mqtts://{rt.public_hostnames[0]}:{rt.ports.mqtt_token}  (password: an access token)"
        )
    if "prometheus" in names and rt.is_first_node:
        lines.append(f"  Prometheus      {prometheus_url(rt)}/  (alerts: {prometheus_url(rt)}/alerts; "
                     f"off with --no-prometheus)")  # fmt: skip
    return lines


def state_file(ctx: Context) -> Path:
    return ctx.runtime.run_dir / "launcher.json"


def lock_file(ctx: Context) -> Path:
    """Held (flock) by the one launcher that owns this state directory, for as long as it
    runs; the kernel releases it when that process ends, however it ends."""
    return ctx.runtime.run_dir / "launcher.lock"


def running_launcher(ctx: Context) -> int | None:
    """The pid of a live launcher for this state directory, if one is running."""
    path = state_file(ctx)
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if b"sluicectl" in cmdline else None


def check_ports_free(ctx: Context, components: Sequence[Component]) -> None:
    for component in components:
        for port_name, port in component.port_numbers(ctx.runtime).items():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                # As the services themselves do: connections in TIME_WAIT from a previous
                # run must not count as "in use", only a live listener.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    prefix = "SLUICE_NODE_" if ctx.runtime.node else "SLUICE_"
                    variable = f"{prefix}{port_name.upper()}_PORT"
                    raise LaunchError(
                        f"port {port} ({component.name}) is already in use; stop whatever holds it "
                        f"(ss -ltnp 'sport = :{port}') or choose another with "
                        f"{variable}= or SLUICE_PORT_OFFSET="
                    ) from None


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Supervised:
    """What the launcher knows of one component between its starts: written to the state
    file on every change, read by ``sluice status`` and /healthz."""

    state: str = STARTING
    since: float = field(default_factory=time.time)  # wall clock of the last change of state
    started: float = field(default_factory=time.monotonic)  # when the current process started
    restarts: int = 0
    quick_exits: int = 0  # in a row (RestartPolicy)
    crash_loop: bool = False
    last_exit: str | None = None  # "killed by SIGKILL at <UTC> after 73 s"
    last_error: str | None = None  # the telling line of its log (status only: /healthz is public)
    restart_at: float = 0.0  # monotonic: when RESTARTING ends
    next_check: float = 0.0

    def become(self, state: str) -> None:
        self.state = state
        self.since = time.time()

    def as_json(self, pid: int | None) -> dict[str, object]:
        return {
            "pid": pid,
            "state": self.state,
            "since": _utc(self.since),
            "restarts": self.restarts,
            "crash_loop": self.crash_loop,
            "last_exit": self.last_exit,
            "last_error": self.last_error,
        }


@dataclass
class Launcher:
    ctx: Context
    names: Sequence[str]
    processes: dict[str, Process] = field(default_factory=dict)
    supervised: dict[str, Supervised] = field(default_factory=dict)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    _stopping: bool = False
    # The open, locked lock_file while this launcher owns the state directory; only then
    # does it write or remove the state file.
    _lock_fd: int | None = None
    # Set to stop the thread that keeps this node's nginx on the current CRLs (follow_nginx_inputs).
    _follow_stop: threading.Event = field(default_factory=threading.Event)
    _follower: threading.Thread | None = None

    @property
    def components(self) -> list[Component]:
        """The named components and what they require, in start order, without those this
        runtime does not run (an external cluster's brokers or registry); "kafka" stands for
        every broker of the quorum."""
        runtime = self.ctx.runtime
        wanted = set(self.names)
        if runtime.starts_postgres and not runtime.node and wanted & USES_DATABASE:
            # (Postgres.enabled: only when Sluice starts it; another web node uses the first's)
            wanted.add("postgres")
        if "kafka" in wanted:
            wanted |= {broker.name for broker in BROKERS}
        pending = list(wanted)
        while pending:
            for required in ALL[pending.pop()].requires:
                if required not in wanted:
                    wanted.add(required)
                    pending.append(required)
        return [ALL[name] for name in ORDER if name in wanted and ALL[name].enabled(runtime)]

    def _claim(self) -> None:
        """Take the state directory, or raise if another launcher holds it.  Two launchers
        started at once cannot both pass: the lock is taken, not just looked at."""
        rt = self.ctx.runtime
        fd = os.open(lock_file(self.ctx), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = running_launcher(self.ctx)
            who = f"pid {other}" if other is not None else "starting"
            raise LaunchError(
                f"Sluice is already running from {rt.state_dir} ({who}); stop it with: platform/bin/sluice down"
            ) from None
        self._lock_fd = fd

    def _release(self) -> None:
        """Give the state directory up: the state file goes first, then the lock."""
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            state_file(self.ctx).unlink()
        os.close(self._lock_fd)
        self._lock_fd = None

    def _write_state(self) -> None:
        if self._lock_fd is None:
            raise LaunchError("internal error: the launcher wrote its state without owning the state directory")
        path = state_file(self.ctx)
        # Written whole, then renamed: `status` never reads half a file.
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "components": {n: p.pid for n, p in self.processes.items()},
                    "state_dir": str(self.ctx.runtime.state_dir),
                    # Pids change when a component is restarted: this file is rewritten on
                    # every start, exit and recovery.
                    "supervision": {
                        n: self.supervised.setdefault(n, Supervised()).as_json(p.pid) for n, p in self.processes.items()
                    },
                },
                indent=2,
            )
        )
        partial.replace(path)

    def _raise_if_died(self, component: Component) -> None:
        process = self.processes[component.name]
        code = process.exit_code()
        if code is not None:
            last = last_error(process.log_path)
            raise LaunchError(
                f"{component.name} exited with status {code} while starting: {last}  [log: {process.log_path}]"
            )

    def wait_healthy(self, component: Component) -> None:
        deadline = time.monotonic() + component.startup_timeout
        reason: str | None = "not checked yet"
        while time.monotonic() < deadline:
            self._raise_if_died(component)
            reason = component.check(self.ctx)
            if reason is None:
                component.after_healthy(self.ctx)
                self.supervised.setdefault(component.name, Supervised()).become(RUNNING)
                self._write_state()
                return
            time.sleep(0.5)
        self._raise_if_died(component)
        raise LaunchError(
            f"{component.name} did not become healthy within {component.startup_timeout:.0f} s "
            f"(last check: {reason}); see {self.ctx.log(component.name)}"
        )

    def _start(self, component: Component) -> None:
        component.prepare(self.ctx)
        # What prepare created under umask 077 is private; the few public paths (CRLs, the
        # JWKS, static files, the web socket's directory) are opened here, before nginx needs them.
        open_public_paths(self.ctx.runtime)
        process = component.process(self.ctx)
        process.start()
        self.processes[component.name] = process
        self.supervised[component.name] = Supervised()
        self._write_state()

    def start(self) -> None:
        """Start everything in order and wait until each is healthy; on any failure stop
        what was started and raise."""
        rt = self.ctx.runtime
        # Before anything is started or written: state left open by an earlier version (or
        # by hand) stops the start with the command that fixes it.
        refuse_open_state(rt)
        if rt.node:
            self._refuse_what_a_node_may_not_run()
        make_state_dir(rt)
        rt.run_dir.mkdir(parents=True, exist_ok=True)
        # Nothing else is written before this launcher owns the state directory: a refused
        # start leaves a running launcher's state file, secrets and logs as they were.
        self._claim()
        rt.logs_dir.mkdir(parents=True, exist_ok=True)
        log_to(rt.logs_dir)
        fresh_metrics_dir(self.ctx)
        try:
            rt.ensure_secrets()
        except ConfigurationError as exc:
            raise LaunchError(str(exc)) from None
        check_ports_free(self.ctx, self.components)
        self._write_state()
        started: list[Component] = []
        for component in self.components:
            say(f"starting {component.name}")
            self._start(component)
            started.append(component)
            if component.name in WAIT_BEFORE_NEXT:
                self.wait_healthy(component)
        for component in started:
            if component.name not in WAIT_BEFORE_NEXT:
                self.wait_healthy(component)
        running = {c.name for c in self.components}
        if {"web", "ingest", "nginx", "worker", "beat"} <= running or (rt.node and {"web", "nginx"} <= running):
            self.wait_platform()
        if "nginx" in running:
            self._follow_nginx_inputs()

    def _refuse_what_a_node_may_not_run(self) -> None:
        rt = self.ctx.runtime
        refused = [c.name for c in self.components if c.name not in NODE_COMPONENTS]
        if refused:
            raise LaunchError(
                f"node {rt.node} may run {', '.join(NODE_COMPONENTS)}; {', '.join(refused)} run once per "
                f"platform, on the first node (platform/bin/sluice up, without --node)"
            )
        if not bundle_path(rt).exists():
            raise LaunchError(
                f"node {rt.node}: no platform to join in {rt.state_dir} (no CRL bundle yet); start the first "
                f"node there first (platform/bin/sluice up), then this one"
            )

    def _follow_nginx_inputs(self) -> None:
        """Keep this node's nginx on the current CRL and trust bundles, whichever node's
        process changed them (a tenant created through another node, a root CRL refresh)."""
        self._follower = threading.Thread(
            target=follow_nginx_inputs, args=(self.ctx.runtime, self._follow_stop), name="nginx-follower", daemon=True
        )
        self._follower.start()

    def wait_platform(self) -> None:
        """Every part answers, as the web app sees it (its /healthz through nginx)."""
        deadline = time.monotonic() + PLATFORM_TIMEOUT
        reason: str | None = "not checked yet"
        while time.monotonic() < deadline:
            for component in self.components:
                self._raise_if_died(component)
            reason = platform_health(self.ctx, NODE_NEEDS if self.ctx.runtime.node else None)
            if reason is None:
                return
            time.sleep(0.5)
        raise LaunchError(
            f"the platform did not become healthy within {PLATFORM_TIMEOUT:.0f} s ({reason}); "
            f"see the logs in {self.ctx.runtime.logs_dir}"
        )

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._follow_stop.set()
        if self._follower is not None:
            self._follower.join(timeout=10)
        for name, process in reversed(self.processes.items()):  # the reverse of the start order
            if process.running():
                say(f"stopping {name}")
            process.stop(timeout=ALL[name].stop_timeout)
            ALL[name].after_stop(self.ctx)
        # A launcher that never owned the state directory (it was refused) removes nothing.
        self._release()

    def watch(self) -> None:
        """Keep every component running until a signal ends the launcher: one that exits is
        started again after a backoff (``RestartPolicy``) while the others keep serving."""
        while True:
            self.supervise_once()
            time.sleep(WATCH_INTERVAL)

    def supervise_once(self) -> None:
        """One look at every component: notice exits, start what waited out its backoff,
        and ask restarted ones whether they answer yet."""
        now = time.monotonic()
        for name, process in list(self.processes.items()):  # in start order
            supervised = self.supervised.setdefault(name, Supervised())
            if supervised.state == RESTARTING:
                if now >= supervised.restart_at:
                    self._restart(name)
                continue
            code = process.exit_code()
            if code is not None:
                self._exited(name, process, code)
            elif supervised.state == STARTING and now >= supervised.next_check:
                supervised.next_check = now + CHECK_INTERVAL
                if ALL[name].check(self.ctx) is None:
                    supervised.become(RUNNING)
                    say(f"{name} is back (pid {process.pid}, restart {supervised.restarts})")
                    self._write_state()

    def _exited(self, name: str, process: Process, code: int) -> None:
        supervised = self.supervised[name]
        # What the dead process left in its group (nginx's workers, uvicorn's, Celery's
        # pool) would hold its sockets and ports: end it before a new one starts.
        process.stop(timeout=5)
        ran_for = time.monotonic() - supervised.started
        supervised.last_exit = f"{describe_exit(code)} at {_utc(time.time())} after {ran_for:.0f} s"
        supervised.last_error = last_error(process.log_path)
        self._back_off(
            name,
            ran_for,
            f"{name} exited unexpectedly, {supervised.last_exit}: {supervised.last_error}  [log: {process.log_path}]",
        )

    def _back_off(self, name: str, ran_for: float, why: str) -> None:
        supervised = self.supervised[name]
        supervised.quick_exits = self.policy.quick_exits(supervised.quick_exits, ran_for)
        delay = self.policy.delay(supervised.quick_exits)
        supervised.crash_loop = self.policy.in_crash_loop(supervised.quick_exits)
        supervised.restart_at = time.monotonic() + delay
        supervised.become(RESTARTING)
        say(f"{why}; restarting it in {delay:.0f} s, the rest keeps running", logging.WARNING)
        if supervised.crash_loop:
            say(
                f"CRASH LOOP: {name} exited {supervised.quick_exits} times in a row, each within "
                f"{self.policy.healthy_after:.0f} s of its start; retrying every {delay:.0f} s. "
                f"Its log: {self.ctx.log(name)}",
                logging.ERROR,
            )
        self._write_state()

    def _restart(self, name: str) -> None:
        component = ALL[name]
        supervised = self.supervised[name]
        try:
            component.prepare_restart(self.ctx)
            open_public_paths(self.ctx.runtime)
            process = component.process(self.ctx)
            process.start()
        except (LaunchError, OSError) as exc:
            self._back_off(name, 0.0, f"{name} could not be started again: {exc}")
            return
        self.processes[name] = process
        supervised.restarts += 1
        supervised.started = time.monotonic()
        supervised.next_check = supervised.started + CHECK_INTERVAL
        supervised.become(STARTING)
        say(f"restarting {name} (restart {supervised.restarts}, pid {process.pid})")
        self._write_state()


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the launcher.  A BaseException, as KeyboardInterrupt is: the
    handler raises it wherever the main thread happens to be, and an ``except Exception`` there
    must not swallow it.  ``logging`` is one such place (``Handler.emit`` hands any Exception to
    ``handleError``): a signal that arrived while the launcher logged a line was printed as a
    "Logging error" and lost, the handlers were already ignoring further signals, and the
    launcher ran on for ever."""


def install_signal_handlers() -> None:
    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
