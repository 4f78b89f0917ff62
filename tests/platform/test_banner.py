"""What ``sluice up`` prints once it is ready, and the README's "What you get" table: every
command in them runs as written, pasted into a fresh shell at the checkout's root."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from config.env import BASE_DIR, Runtime, load_runtime
from sluicectl.components import Context
from sluicectl.launcher import ORDER, banner, manage_command

COMMAND = re.compile(r"`([^`]+)`")


def fresh_shell(command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``command`` as a user would paste it: bash at the checkout's root, with no Sluice
    variables and no virtualenv activated; no controlling terminal, so a password prompt
    reads stdin."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    return subprocess.run(
        ["bash", "-c", command],
        cwd=BASE_DIR,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
        check=False,
    )


def scratch_platform(state: Path) -> dict[str, str]:
    """A migrated database in a scratch state directory, as `sluice up` leaves it before the
    banner, through the launcher's own environment."""
    env = {**os.environ, "SLUICE_ENV": "test", "SLUICE_STATE_DIR": str(state)}
    env.pop("DATABASE_URL", None)
    state.mkdir(mode=0o700)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=BASE_DIR, env=env, check=True, timeout=120)
    return env


def test_the_banners_commands_run_as_printed(tmp_path: Path) -> None:
    # given a platform's database, in a state directory that is not the default one
    state = tmp_path / "state"
    env = scratch_platform(state)
    runtime = load_runtime(env)
    # when the launcher's first-admin step and banner print their commands
    first = subprocess.run(
        [sys.executable, "manage.py", "sluice_first_admin", "--url", f"{runtime.web_url}/admin/",
         "--manage", manage_command(runtime)],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    again = subprocess.run(
        [sys.executable, "manage.py", "sluice_first_admin", "--manage", manage_command(runtime)],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    printed = "\n".join([first.stdout, again.stdout, *banner(Context(runtime=runtime, env=env), ORDER)])
    commands = COMMAND.findall(printed)
    changepassword = [c for c in commands if c.endswith("changepassword admin")]
    token = [c for c in commands if c.endswith("sluice_token admin")]
    # then they name the virtualenv's Python and this platform's state directory
    assert len(changepassword) == 2, printed
    assert changepassword[0] == changepassword[1]
    assert changepassword[0].startswith(f"SLUICE_ENV=test SLUICE_STATE_DIR={state} .venv/bin/python manage.py ")
    assert "python manage.py" not in printed.replace(".venv/bin/python manage.py", "")

    # and pasted into a fresh shell, changepassword changes the admin's password
    new_password = f"Pw-{secrets.token_urlsafe(12)}"
    changed = fresh_shell(changepassword[0], stdin=f"{new_password}\n{new_password}\n")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "Password changed successfully for user 'admin'" in changed.stdout
    login = f"from django.contrib.auth import authenticate as a; print(a(username='admin', password={new_password!r}))"
    check = subprocess.run([sys.executable, "manage.py", "shell", "-c", login],
                           cwd=BASE_DIR, env=env, capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    assert check.stdout.strip().splitlines()[-1] == "admin"
    # and sluice_token prints a token
    (token_command,) = token
    issued = fresh_shell(token_command)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    assert len(issued.stdout.strip()) >= 32


def test_the_banners_curl_reaches_the_platform(runtime: Runtime) -> None:
    # given the running test platform's banner
    lines = banner(Context(runtime=runtime, env=dict(runtime.environ)), ORDER)
    (curl,) = [c for c in COMMAND.findall("\n".join(lines)) if c.startswith("curl ")]
    # when its curl command is pasted into a fresh shell
    answer = fresh_shell(curl)
    # then it trusts the platform's certificate and reaches the health check
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["status"] in ("ok", "degraded", "down"), answer.stdout


def test_the_readmes_what_you_get_commands_are_the_banners() -> None:
    # given the README's "What you get" table, and what a default `sluice up` prints
    readme = (BASE_DIR / "README.md").read_text()
    section = readme.split("## What you get", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    default = load_runtime({})
    printed = "\n".join(banner(Context(runtime=default, env={}), ORDER))
    printed += f"\n`{manage_command(default)} changepassword admin`"
    # then every manage.py command of the table is one the banner prints, in the same words
    in_table = [c for c in COMMAND.findall(table) if "manage.py" in c]
    assert in_table, table
    for command in in_table:
        assert command.startswith(".venv/bin/python manage.py "), command
        assert f"`{command}`" in printed, command
