"""Which Java runs what: Kafka needs 17+, Apicurio 3.3 needs 21+ (class file 65)."""

from __future__ import annotations

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
