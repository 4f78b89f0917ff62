"""The HTTPS listener (nginx) as a device meets it: no TLS session is ever resumed, so every
connection's client certificate is checked against the current CRLs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from certs.platform_pki import PlatformPki
from config.env import Runtime
from tests.conftest import issue_device_credential, unique_slug

pytestmark = [pytest.mark.integration]


def s_client(runtime: Runtime, workdir: Path, *extra: str) -> str:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{runtime.ports.web}", "-servername", "localhost",
         "-CAfile", str(PlatformPki(runtime.pki_dir).root_cert), "-cert", str(workdir / "device.crt"),
         "-key", str(workdir / "device.key"), *extra],
        input=b"", capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return (done.stdout + done.stderr).decode(errors="replace")


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_no_session_is_resumed_with_an_earlier_verdict(services: Runtime, tmp_path: Path, version: str) -> None:
    # given a device that asks to save the TLS session of its first connection
    credential = issue_device_credential(services, tenant=unique_slug("t"), group="g", device="d")
    (tmp_path / "device.crt").write_text(credential.certificate_pem)
    (tmp_path / "device.key").write_text(credential.key_pem)
    first = s_client(services, tmp_path, version, "-sess_out", str(tmp_path / "session.pem"))
    assert "Verify return code: 0 (ok)" in first, first
    # then the server issued no resumable session at all (no session ID, no ticket) ...
    session = tmp_path / "session.pem"
    if session.exists():
        # ... or, offered one back, it makes a full handshake, verifying the certificate again
        second = s_client(services, tmp_path, version, "-sess_in", str(session))
        assert "Reused, " not in second, second
        assert "New, " in second, second
