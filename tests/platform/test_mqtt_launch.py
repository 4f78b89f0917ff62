"""``sluice up`` starts Mosquitto with its auth process (building the plugin from its C
source), says where it listens, and ``--no-mqtt`` leaves both out."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
from pathlib import Path

from certs.platform_pki import PlatformPki
from config.env import BASE_DIR, load_runtime


def test_sluice_up_starts_mosquitto_and_says_where_and_no_mqtt_leaves_it_out(tmp_path: Path) -> None:
    from tests.platform.test_launcher import SLUICECTL, launcher_env, read_until

    env = launcher_env(tmp_path / "with", 21700)
    runtime = load_runtime(env)
    # when the launcher starts Mosquitto (and what it needs: its auth process, nginx, Redis)
    proc = subprocess.Popen([*SLUICECTL, "up", "--components", "mosquitto"], env=env, cwd=BASE_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        seen = read_until(proc, "press Ctrl-C", timeout=120)
        # then it built the plugin, started both, and prints where devices connect
        assert "starting mqtt-auth" in seen
        assert "starting mosquitto" in seen
        assert f"MQTT (mTLS)     mqtts://localhost:{runtime.ports.mqtt}" in seen
        assert f"MQTT (token)    mqtts://localhost:{runtime.ports.mqtt_token}" in seen
        assert list((runtime.state_dir / "mosquitto").glob("sluice_auth-*.so"))
        # and the token listener speaks TLS with the platform's certificate
        context = ssl.create_default_context(cafile=str(PlatformPki(runtime.pki_dir).trust_bundle))
        with (
            socket.create_connection(("127.0.0.1", runtime.ports.mqtt_token), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    # when started again with --no-mqtt (a state and ports of its own), then neither starts
    env = launcher_env(tmp_path / "without", 21800)
    proc = subprocess.Popen([*SLUICECTL, "up", "--no-mqtt", "--components", "redis,mosquitto"], env=env,
                            cwd=BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        seen = read_until(proc, "press Ctrl-C", timeout=60)
        assert "starting mosquitto" not in seen
        assert "starting mqtt-auth" not in seen
        assert "MQTT" not in seen
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
