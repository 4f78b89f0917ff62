"""README.md is executed: every shell and Python block in it runs here, exactly as written,
so the README cannot drift from what Sluice does.

Which blocks run.  Every code block of the README, fenced or indented, is either run -- a
```bash or ```python fence -- or marked on the line right before it with an HTML comment
``<!-- not run: <why> -->`` (the commands that start the platform, a benchmark).  Anything
else fails ``test_every_code_block_is_run_or_marked``: an unmarked ```sh fence (Debian's
``sh`` is dash, and a walkthrough that uses bash arrays stops at the first ``(``), a block
without a language, a marker without a reason.

How they run.  In README order, in ONE bash session, so variables carry from block to block
as for a reader pasting them in sequence, under ``set -euo pipefail`` (any failing command,
unset variable or failing pipe stage fails its block).  The working directory is a
temporary one standing for the checkout root: it links ``manage.py``, ``.venv`` and ``platform`` from the
checkout, so ``.venv/bin/python manage.py ...`` runs as written (with the environment
``sluice test`` gave pytest, so it finds this test stack's state), and the files the blocks
write land there.  A Python block runs at its place in the same session, as the venv's
python reading the block on stdin, so it sees what the blocks before it exported.  The only
variables set for the blocks are those the README tells a reader to set (``SLUICE``, ``CA``,
``KAFKA``, ``KAFKA_OAUTH``, ``MQTT``, ``TENANT``: a fresh tenant, since other tests share the stack's Kafka and
registry), pointing at this test stack.  curl reads a ``.curlrc`` from ``CURL_HOME`` that
makes an HTTP error status fail the command (``fail-with-body``) without a character of the
blocks changing.

The platform's Celery worker (topics, ACLs) is started as ``sluice up`` would, and its first
admin account is created by the same command ``sluice up`` runs.

Ingest's error table is checked against the code: every error code raised on ingest's path
(found by reading the modules' syntax trees) must be in it."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from django.contrib.auth import get_user_model
from django.core.management import call_command
from markdown_it import MarkdownIt

from certs import ca
from certs.models import Certificate
from config import errors
from config.env import BASE_DIR, Runtime
from tests.conftest import unique_slug
from tests.integration.test_ingest import consume, wire

README = BASE_DIR / "README.md"
RUN_LANGUAGES = ("bash", "python")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->", re.DOTALL)
# A Python block is fed to the venv's python through a quoted here-document.
PYTHON_END = "SLUICE_README_PYTHON_BLOCK"
CURLRC = "fail-with-body\nsilent\nshow-error\n"
# What the blocks take from their environment with a default (${VAR:-...}, os.environ.get).
DEFAULTED = re.compile(r"\$\{\w+:-[^}]*\}|os\.environ\.get\([^)]*\)")


@dataclass(frozen=True)
class Block:
    """One code block of the README."""

    language: str  # the fence's info string; "" for an indented block
    text: str
    line: int  # 1-based line of the fence in README.md
    not_run: str | None  # the reason given in the marker before it, if any

    @property
    def runs(self) -> bool:
        return self.not_run is None and self.language in RUN_LANGUAGES

    def where(self) -> str:
        return f"README.md line {self.line} ({self.language or 'indented'} block)"


def readme_blocks(markdown: str) -> list[Block]:
    """Every code block, in order, with the ``not run`` marker right before it."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    blocks = []
    for index, token in enumerate(tokens):
        if token.type not in ("fence", "code_block"):
            continue
        before = tokens[index - 1] if index else None
        marker = (
            NOT_RUN.fullmatch(before.content.strip()) if before is not None and before.type == "html_block" else None
        )
        assert token.map is not None
        blocks.append(Block(language=token.info.strip(), text=token.content, line=token.map[0] + 1,
                            not_run=marker["reason"] if marker else None))  # fmt: skip
    return blocks


def session_script(blocks: list[Block]) -> str:
    """One bash script running ``blocks`` in order, each between markers that say where its
    output starts and that it finished."""
    parts = ["set -euo pipefail"]
    for number, block in enumerate(blocks):
        parts.append(f"printf '\\n@@block {number} start@@\\n'")
        if block.language == "python":
            assert PYTHON_END not in block.text
            parts.append(f".venv/bin/python - <<'{PYTHON_END}'\n{block.text}{PYTHON_END}")
        else:
            parts.append(block.text)
        parts.append(f"printf '\\n@@block {number} done@@\\n'")
    return "\n".join(parts) + "\n"


def outputs_by_block(output: str, count: int) -> list[str | None]:
    """Each block's output, or None for a block that did not finish."""
    found: list[str | None] = []
    for number in range(count):
        match = re.search(rf"@@block {number} start@@\n(.*?)\n@@block {number} done@@", output, re.DOTALL)
        found.append(match[1] if match else None)
    return found


# -- which blocks run (no services needed) ----------------------------------------------


def test_every_code_block_is_run_or_marked() -> None:
    # given every code block of the README
    blocks = readme_blocks(README.read_text())

    # then each one either runs here or says why it cannot
    unaccounted = [b.where() for b in blocks if not b.runs and b.not_run is None]
    assert not unaccounted, (
        f"{unaccounted}: fence shell blocks as ```bash (and Python as ```python) so that the test runs them, "
        "or put <!-- not run: <why> --> on the line before the block"
    )
    # and the walkthrough is there to run: shell and Python
    assert {b.language for b in blocks if b.runs} == set(RUN_LANGUAGES)


def test_run_blocks_reach_sluice_only_through_the_variables_a_reader_sets() -> None:
    # given the blocks that run
    blocks = [b for b in readme_blocks(README.read_text()) if b.runs]

    # then none names a host and port itself, outside the defaults of SLUICE, CA, KAFKA_OAUTH
    hard_coded = {b.where(): re.findall(r"localhost:\d+|127\.0\.0\.1:\d+", DEFAULTED.sub("", b.text)) for b in blocks}
    assert not {where: found for where, found in hard_coded.items() if found}
    # and none calls python (or manage.py) other than the checkout's venv
    for block in (b for b in blocks if b.language == "bash"):
        assert not re.search(r"(?<![/\w])python3?\b", block.text), block.where()


def test_a_block_that_fails_is_named_by_its_readme_line(tmp_path: Path) -> None:
    # given a README of three blocks whose second fails half way
    markdown = (
        '```bash\nGREETING=hello\n```\n\ntext\n\n```bash\necho "$GREETING"\nfalse\necho unreachable\n```\n\n'
        "```python\nprint('never')\n```\n"
    )
    blocks = readme_blocks(markdown)

    # when they run as one session
    result = subprocess.run(["bash", "-c", session_script(blocks)], capture_output=True, text=True,
                            cwd=tmp_path, check=False)  # fmt: skip

    # then the session stops there: the first block finished, the second printed what came before
    # its failure (the variable carried over), the third never ran
    outputs = outputs_by_block(result.stdout, len(blocks))
    assert result.returncode == 1
    assert outputs == ["", None, None]
    assert "@@block 1 start@@\nhello\n" in result.stdout
    assert "unreachable" not in result.stdout
    assert [b.line for b in blocks] == [1, 7, 13]


# -- ingest's error table ---------------------------------------------------------------

# Where the data plane's refusals are raised (the modules ``ingest/app.py`` runs a request
# through), and the codes among them that ingest never answers, with the reason.
INGEST_PATH = ("ingest/app.py", "ingest/services.py", "ingest/records.py", "ingest/ratelimit.py",
               "ingest/idempotency.py", "devices/registry.py", "certs/tls_identity.py", "tenants/oauth/tokens.py",
               "tenants/policy.py")  # fmt: skip
NOT_INGEST = {
    "invalid": "registry.py: a schema registration refused (REST API), 400 with field errors",
    "invalid_schema": "registry.py: a schema registration refused (REST API), as a field code",
    "invalid_choice": "registry.py: a schema registration's schema_type (REST API), as a field code",
    "required": "registry.py: a schema registration without a schema (REST API), as a field code",
    "conflict": "registry.py: the registry's compatibility verdict on a registration (REST API)",
    "credential_policy": "policy.py: token issuance and the provisioning API refuse a client whose group is mTLS only",
    "consumer_disabled": "policy.py: a disabled consumer's token or certificate at the scoped registry (and its ACLs)",
    "not_a_consumer_certificate": "tls_identity.py: a device's certificate at the scoped registry, which reads for "
    "consumers",
    "group_changed": "services.bridge_verdict: the MQTT bridge's reason for not writing a device's record (a log "
    "line and a metric; MQTT has no answer), never an HTTPS answer",
}


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def raised_codes(source: str) -> set[str]:
    """The error codes ``source`` can raise: ``code=`` arguments, the ``code`` parameter of
    helpers that build an error (passed or defaulted), the codes of error classes raised
    without one, and ``(code, ErrorClass, message)`` tables."""
    default_codes = {c.__name__: c.code for c in [errors.SluiceError, *_subclasses(errors.SluiceError)]}
    tree = ast.parse(source)
    helpers: dict[str, tuple[int, str | None]] = {}  # function -> (position of ``code``, its default)
    for node in ast.walk(tree):
        # a helper that builds an error (annotated to return one), not a field error's dict
        returns_error = isinstance(node, ast.FunctionDef) and getattr(node.returns, "id", None) in default_codes
        if isinstance(node, ast.FunctionDef) and returns_error:
            names = [a.arg for a in node.args.args]
            if "code" in names:
                position = names.index("code")
                defaults = dict(zip(names[len(names) - len(node.args.defaults) :], node.args.defaults, strict=True))
                default = defaults.get("code")
                helpers[node.name] = (position, default.value if isinstance(default, ast.Constant) else None)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            code: ast.expr | None = next((k.value for k in node.keywords if k.arg == "code"), None)
            if code is None and name in helpers:
                position, default = helpers[name]
                code = node.args[position] if len(node.args) > position else ast.Constant(default)
            if code is None and name in default_codes:
                code = ast.Constant(default_codes[name])
            if name == "error_body" and node.args:
                code = node.args[0]
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                found.add(code.value)
        elif isinstance(node, ast.Tuple) and len(node.elts) == 3:
            first, second = node.elts[:2]
            if isinstance(first, ast.Constant) and isinstance(second, ast.Name) and second.id in default_codes:
                found.add(first.value)
    return found


def ingest_error_table(markdown: str) -> str:
    table = markdown[markdown.index("| status | code | when |") :]
    return table[: table.index("\n\n")]


def test_every_code_ingest_answers_is_in_the_readmes_error_table() -> None:
    # given every error code raised on ingest's path
    raised = set().union(*(raised_codes((BASE_DIR / module).read_text()) for module in INGEST_PATH))
    assert {"certificate_invalid", "token_expired", "rate_limited", "internal_error"} <= raised  # the scan sees them

    # then the README's table names each one ingest can answer
    listed = set(re.findall(r"`([a-z][a-z_]+)`", ingest_error_table(README.read_text())))
    missing = raised - listed - set(NOT_INGEST)
    assert not missing, f"add {sorted(missing)} to the README's ingest error table (or to NOT_INGEST, with why)"
    # and the exceptions are still raised somewhere (a stale one would hide a new code)
    assert set(NOT_INGEST) <= raised


# -- the README, run against this test stack ---------------------------------------------


@pytest.fixture
def platform_celery(celery_worker: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """The worker ``sluice up`` runs, once it answers (topics and ACLs are its tasks)."""
    from config.celery import app

    deadline = time.monotonic() + 90
    while not app.control.ping(timeout=1):
        assert celery_worker.poll() is None, "the Celery worker exited"
        assert time.monotonic() < deadline, "the Celery worker did not answer within 90 s"
    return celery_worker


@pytest.fixture
def checkout_root(tmp_path: Path) -> Path:
    """A directory standing for the checkout root: ``manage.py``, ``.venv`` and ``platform``
    (the monitoring section checks its rule files with promtool) as links."""
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "manage.py").symlink_to(BASE_DIR / "manage.py")
    (root / "platform").symlink_to(BASE_DIR / "platform")
    (root / ".venv").symlink_to(BASE_DIR / ".venv")
    return root


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(600)
def test_the_readme_runs_as_written(
    services: Runtime, platform_celery: Any, checkout_root: Path, tmp_path: Path
) -> None:
    # given the platform's first admin account, made as `sluice up` makes it
    call_command("sluice_first_admin")
    assert get_user_model().objects.filter(username="admin", is_superuser=True).exists()
    # and the variables a reader sets, pointing at this test stack, with a tenant of its own
    tenant = unique_slug("readme")
    curl_home = tmp_path / "curl-home"
    curl_home.mkdir()
    (curl_home / ".curlrc").write_text(CURLRC)
    env = {
        **os.environ,
        "SLUICE": services.web_url,
        "CA": str(services.pki_dir / "root-ca.crt"),
        "KAFKA": services.kafka_bootstrap,
        "KAFKA_OAUTH": services.kafka_oauth_bootstrap,
        "MQTT": f"localhost:{services.ports.mqtt}",
        "TENANT": tenant,
        "CURL_HOME": str(curl_home),
    }
    blocks = [b for b in readme_blocks(README.read_text()) if b.runs]

    # when every block runs, in order, in one bash session
    script = session_script(blocks)
    result = subprocess.run(["bash", "-c", script], cwd=checkout_root, env=env, capture_output=True, text=True,
                            timeout=480, check=False)  # fmt: skip

    # then every block finished (the first that did not is named, with what it printed)
    outputs = outputs_by_block(result.stdout, len(blocks))
    for block, output in zip(blocks, outputs, strict=True):
        if output is None:
            started = result.stdout.rpartition("start@@\n")[2]
            pytest.fail(f"{block.where()} failed (exit {result.returncode}):\n{block.text}\n--- its output:\n"
                        f"{started}\n--- stderr:\n{result.stderr[-4000:]}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    transcript = "\n".join(f"{b.where()}:\n{o}" for b, o in zip(blocks, outputs, strict=True))

    # and every POST to ingest was accepted: as many answers as the blocks make requests,
    # the first batch of two records whole
    for block, output in zip(blocks, outputs, strict=True):
        assert output is not None
        requests = [line for line in block.text.splitlines() if "/ingest/v1/records" in line and
                    not line.lstrip().startswith("#")]  # fmt: skip
        accepted = [int(n) for n in re.findall(r'"accepted":\s*(\d+)', output)]
        assert len(accepted) == len(requests), f"{block.where()}: {output}"
    first_post = next(o for b, o in zip(blocks, outputs, strict=True) if "/ingest/v1/records" in b.text)
    assert re.search(r'"accepted":\s*2\b', first_post or ""), transcript
    # and the Python program delivered its record over OAUTHBEARER to the group's topic
    topic = f"iot.{tenant}.eu.temperature"
    produced = next(o for b, o in zip(blocks, outputs, strict=True) if "def produce_one" in b.text)
    assert f"delivered to {topic} [" in (produced or ""), transcript
    # and the consumer read it back: the Python program deserialized three records through the
    # scoped registry and printed their identity headers; kcat read three over each listener
    consumed = next(o for b, o in zip(blocks, outputs, strict=True) if "JSONDeserializer" in b.text) or ""
    assert consumed.count(f"{tenant} thermo thermo-0001 {{'celsius': ") == 3, transcript
    # and the device published over MQTT to its own topic, accepted by Mosquitto
    mqtt = next(o for b, o in zip(blocks, outputs, strict=True) if "mosquitto_pub" in b.text) or ""
    assert re.search(rf"Client {tenant}/thermo-0001 received PUBACK \(Mid: 1, RC:(0|16)\)", mqtt), transcript
    kcat = next(o for b, o in zip(blocks, outputs, strict=True) if "kcat -C" in b.text) or ""
    assert len(re.findall(rf"^p\d+@\d+ sluice-tenant={tenant},sluice-group=", kcat, re.MULTILINE)) == 6, transcript

    # and the device holds its renewed certificate, with its tenant CA, as the later blocks used it
    device_certificates = Certificate.objects.filter(tenant__slug=tenant, device_ref="thermo-0001")
    renewed = device_certificates.get(origin=Certificate.Origin.EST_RENEWAL)
    assert renewed.status == Certificate.Status.ACTIVE
    assert device_certificates.get(origin=Certificate.Origin.CSR).status == Certificate.Status.SUPERSEDED
    chain = x509.load_pem_x509_certificates((checkout_root / "thermo-0001.crt").read_bytes())
    assert [ca.fingerprint_sha256(c) for c in chain[:1]] == [renewed.fingerprint_sha256]
    assert chain[1].subject == chain[0].issuer

    # and the gateway agent forwarded its file and holds nothing more
    agent = next(o for b, o in zip(blocks, outputs, strict=True) if "sluice-agent run" in b.text) or ""
    assert '{"buffered": 0, "buffered_bytes": 0, "batches_in_flight": 0, "dropped": 0, "rejected": 0' in agent

    # and the topic holds every record the README wrote, all in the Confluent wire format of
    # the stream's one schema: 2 + 1 + 1 over mTLS, 3 by the agent (mTLS), 1 with a token, 1 on
    # Kafka directly
    messages = consume(topic, services, expected=9)
    assert len(messages) == 9, transcript
    assert len({wire(m.value())[:2] for m in messages}) == 1
    assert wire(messages[0].value())[0] == 0


def test_session_script_runs_python_blocks_with_the_venv(tmp_path: Path) -> None:
    # given a bash block exporting a variable and a Python block reading it
    blocks = readme_blocks("```bash\nexport ANSWER=42\n```\n\n```python\nimport os, sys\n"
                           "print(os.environ['ANSWER'], os.path.realpath(sys.prefix))\n```\n")  # fmt: skip
    (tmp_path / ".venv").symlink_to(BASE_DIR / ".venv")

    # when the session runs them
    result = subprocess.run(["bash", "-c", session_script(blocks)], capture_output=True, text=True, cwd=tmp_path,
                            check=False)  # fmt: skip

    # then the Python block ran with the venv's python and saw the export
    assert result.returncode == 0, result.stderr
    assert outputs_by_block(result.stdout, 2)[1] == f"42 {os.path.realpath(sys.prefix)}\n"


def test_a_marker_needs_a_reason_and_must_touch_its_block() -> None:
    # given a fence marked without a reason, one marked with a reason, and one whose marker is
    # separated from it by a paragraph
    blocks = readme_blocks(
        "<!-- not run: -->\n```sh\nplatform/bin/sluice up\n```\n\n"
        "<!-- not run: starts the platform -->\n```sh\nplatform/bin/sluice up\n```\n\n"
        "<!-- not run: starts the platform -->\n\nSome text.\n\n```sh\nplatform/bin/sluice up\n```\n"
    )

    # then only the second is accounted for
    assert [b.not_run for b in blocks] == [None, "starts the platform", None]
    assert not any(b.runs for b in blocks)
