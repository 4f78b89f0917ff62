"""Which Java runs what: Kafka needs 17+, Apicurio 3.3 needs 21+ (class file 65)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sluicectl import fetch
from sluicectl.errors import LaunchError


def fake_jvm(root: Path, name: str, version: str) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "release").write_text(f'IMPLEMENTOR="test"\nJAVA_VERSION="{version}"\n')
    java = home / "bin" / "java"
    java.write_text("#!/bin/sh\nexit 0\n")
    java.chmod(0o755)
    return java


def test_the_newest_jvm_that_is_new_enough_is_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given java 17 on PATH and 21 and 25 installed beside it
    path_java = fake_jvm(tmp_path / "path", "jdk17", "17.0.15")
    monkeypatch.setenv("PATH", str(path_java.parent))
    fake_jvm(tmp_path / "jvm", "jdk21", "21.0.4")
    newest = fake_jvm(tmp_path / "jvm", "temurin-25", "25.0.3")
    roots = (tmp_path / "jvm",)
    # then Kafka gets the one on PATH, the registry the newest 21+
    assert fetch.find_java(17, roots=roots) == path_java
    assert fetch.find_java(21, roots=roots) == newest
    assert fetch.find_java(26, roots=roots) is None


def test_a_configured_java_must_exist_and_be_new_enough(tmp_path: Path) -> None:
    old = fake_jvm(tmp_path, "jdk17", "17.0.1")
    with pytest.raises(LaunchError, match="older than Java 21"):
        fetch.find_java(21, override=str(old))
    with pytest.raises(LaunchError, match="does not exist"):
        fetch.find_java(21, override=str(tmp_path / "nope" / "java"))


def test_fetching_leaves_nothing_where_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a checkout to run from, and a small artifact to unpack with the real mvn
    # (Maven without a project writes dependency:unpack's markers under a literal
    # "${project.basedir}/target" in its working directory)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    target = tmp_path / "dist" / "epoll"
    # when it is fetched
    fetch.unpack("io.netty:netty-transport-native-epoll:4.1.136.Final:jar:linux-x86_64", target, "a test artifact")
    # then the artifact is unpacked where asked, and the checkout is as it was
    assert (target / "META-INF" / "native" / "libnetty_transport_native_epoll_x86_64.so").is_file()
    assert list(checkout.iterdir()) == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SlowStream(io.BytesIO):
    """A download of ``size`` bytes that takes ``seconds_per_read`` on the clock per read."""

    def __init__(self, size: int, clock: FakeClock, seconds_per_read: float) -> None:
        super().__init__(b"x" * size)
        self.clock = clock
        self.seconds_per_read = seconds_per_read

    def read(self, size: int | None = -1) -> bytes:
        self.clock.now += self.seconds_per_read
        return super().read(size)


def test_a_fast_download_of_known_size_reports_each_tenth_and_no_more() -> None:
    # given a 10 MB download read 64 kB at a time, each read taking 10 ms
    clock, lines = FakeClock(), []
    stream = SlowStream(10_000_000, clock, 0.01)
    progress = fetch.Progress("fetching a jar", 10_000_000, say=lines.append, clock=clock, every=5.0)
    # when it is copied
    target = io.BytesIO()
    assert fetch.copy_with_progress(stream, target, progress) == 10_000_000
    progress.finish()
    # then everything arrived, and the terminal got a line per 10 % (not one per read)
    assert target.getvalue() == stream.getvalue()
    percents = [line.split("(")[1].split(" %")[0] for line in lines[:-1]]
    assert percents == ["10", "20", "30", "40", "50", "60", "70", "80", "90", "100"]
    assert lines[0].startswith("fetching a jar: 1.0 MB of 10.0 MB (10 %, 0 s)")
    assert lines[-1] == "fetching a jar: 10.0 MB in 2 s, done"


def test_a_slow_download_reports_every_few_seconds_and_a_silent_one_not_at_all() -> None:
    # given a 1 MB download of unknown size, each 64 kB read taking 2 s
    clock, lines = FakeClock(), []
    progress = fetch.Progress("fetching Kafka", say=lines.append, clock=clock, every=5.0)
    fetch.copy_with_progress(SlowStream(1_000_000, clock, 2.0), io.BytesIO(), progress)
    # then a line every 5 s or so (16 reads, 32 s: at 6, 12, 18, 24 and 30 s), with the bytes so far
    assert len(lines) == 5, lines
    assert lines[0] == "fetching Kafka: 196.6 kB so far (6 s)"
    # and the last bytes are said at the next look, and then, while nothing moves, nothing more
    clock.now += 60
    progress.update(progress.done)
    assert lines[5:] == ["fetching Kafka: 1.0 MB so far (94 s)"]
    clock.now += 60
    progress.update(progress.done)
    assert len(lines) == 6


def test_mavens_download_lines_are_counted_in_bytes() -> None:
    assert fetch.maven_downloaded(
        "Downloaded from central: https://repo.example/org/x/1.0/x-1.0.jar (1.5 MB at 3.2 MB/s)"
    ) == 1_500_000  # fmt: skip
    assert fetch.maven_downloaded("Downloaded from mirror: https://repo.example/x.pom (812 B at 10 kB/s)") == 812
    assert fetch.maven_downloaded("Downloaded from central: https://repo.example/y.jar (24 kB at 91 kB/s)") == 24_000
    assert fetch.maven_downloaded("Downloading from central: https://repo.example/y.jar") == 0
    assert fetch.human_size(158_577_952) == "158.6 MB"
