"""CRLs as files: what nginx serves at the CRL distribution points, what nginx itself checks
client chains against, and the platform root's CRL.

Pure files-and-crypto (no Django), shared by the launcher and the application:

* ``<state>/crl/<name>.crl`` and ``.pem``: one CRL per CA, DER and PEM, served over HTTP
  at the distribution points every certificate names; the broker's JDK checks them, and
  so may any verifier.  A leaf revocation rewrites its CA's files at once.
* ``<state>/crl-bundle.pem``: what nginx's ``ssl_crl`` checks: the **CA level** only.  nginx
  checks a CRL for every certificate of a chain (OpenSSL's CRL_CHECK_ALL), so the bundle
  holds the root's CRL (which revokes tenant CAs: tenant deletion) and, per tenant CA, its
  *anchor*: a CRL with no entries, valid as long as the CA (``anchor_crl``), made once when
  the CA is created.  Leaf revocations are enforced by the application instead (the
  ingest data plane's pushed identity cache, the certificate row for EST), at once and
  without touching nginx: re-reading the bundle means a reload, and a reload ends every
  device's keep-alive connection, so one tenant's revocation would disturb every tenant.
  nginx reloads only when a CA appears (a new tenant, a CA rotation) or the root CRL
  changes (a tenant deleted; a refresh every few weeks).
* The root CRL is its own record of revoked issuing CAs: republishing merges the entries of
  the current file, so a restart never forgets a revocation.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs import ca
from config.env import Runtime

log = logging.getLogger("sluice.crl")

ROOT_CRL_NAME = "platform-root"
ROOT_CRL_VALIDITY = dt.timedelta(days=30)
# The root CRL is signed again this long before its nextUpdate (by the rotation task, or by
# a start that finds it due); never merely because something started: a new root CRL
# changes nginx's bundle, and the reload ends every device's keep-alive connection.
ROOT_CRL_REFRESH_BEFORE = dt.timedelta(days=7)


def bundle_path(runtime: Runtime) -> Path:
    return runtime.state_dir / "crl-bundle.pem"


def anchor_dir(runtime: Runtime) -> Path:
    return runtime.state_dir / "crl-anchors"


@contextlib.contextmanager
def _locked(runtime: Runtime) -> Iterator[None]:
    runtime.crl_dir.mkdir(parents=True, exist_ok=True)
    with open(runtime.state_dir / ".crl.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# CRLs are public by design (signed; nginx's workers serve them; see the PUBLIC list in
# platform/sluicectl/private_state.py).  The bundle is read by nginx's master alone (ssl_crl,
# at start and on SIGHUP), so it stays owner-only like the rest of the state directory.
PUBLIC_CRL_MODE = 0o644
BUNDLE_MODE = 0o600


def _atomic_write(path: Path, data: bytes, *, mode: int, newer_than_before: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    if newer_than_before and path.exists():
        # The JDK's CRL fetcher (URICertStore) keeps its cached CRL whenever the served
        # Last-Modified equals the previous one; HTTP dates have one-second granularity, so
        # a CRL replaced within the same second would go unseen.  Make the mtime step.
        previous = int(path.stat().st_mtime)
        stamp = max(int(time.time()), previous + 1)
        os.utime(tmp, (stamp, stamp))
    os.replace(tmp, path)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1


def _published_number(runtime: Runtime, name: str) -> int:
    path = runtime.crl_dir / f"{name}.crl"
    try:
        return crl_number(x509.load_der_x509_crl(path.read_bytes()))
    except (OSError, ValueError):
        return -1


def write_crl(runtime: Runtime, name: str, crl: x509.CertificateRevocationList) -> bool:
    """Publish one CA's CRL, rebuild the bundle and tell nginx to re-read it.

    CRLs are built under the CA's row lock but written after the transaction commits, so
    two publications can reach this point out of order.  The CRL number only grows
    (RFC 5280 §5.2.3), so an older CRL never replaces a newer one: returns False and
    writes nothing when the published file is already as new."""
    with _locked(runtime):
        if crl_number(crl) <= _published_number(runtime, name):
            return False
        _write_published(runtime, name, crl)
        return True


def _write_published(runtime: Runtime, name: str, crl: x509.CertificateRevocationList) -> None:
    for suffix, data in ((".crl", crl.public_bytes(serialization.Encoding.DER)),
                         (".pem", crl.public_bytes(serialization.Encoding.PEM))):  # fmt: skip
        _atomic_write(runtime.crl_dir / f"{name}{suffix}", data, mode=PUBLIC_CRL_MODE, newer_than_before=True)


def anchor_crl(issuer: ca.Issuer, *, valid_until: dt.datetime) -> x509.CertificateRevocationList:
    """A tenant CA's CRL for nginx's bundle: no entries, valid until the CA itself expires
    (leaf revocations are the application's to enforce; see the module docstring)."""
    valid_for = max(dt.timedelta(days=1), valid_until - dt.datetime.now(dt.UTC))
    return ca.build_crl(issuer=issuer, revoked=[], number=1, valid_for=valid_for)


def write_anchor(runtime: Runtime, name: str, crl: x509.CertificateRevocationList) -> None:
    """Add a CA's anchor to nginx's bundle (a new tenant CA), and have nginx re-read it."""
    with _locked(runtime):
        anchor_dir(runtime).mkdir(parents=True, exist_ok=True)
        # Read by nginx's master only (through the bundle): owner-only like the bundle.
        _atomic_write(anchor_dir(runtime) / f"{name}.pem", crl.public_bytes(serialization.Encoding.PEM),
                      mode=BUNDLE_MODE)  # fmt: skip
        _write_bundle(runtime)
    reload_nginx(runtime)
    reload_mosquitto(runtime)


def has_anchor(runtime: Runtime, name: str) -> bool:
    return (anchor_dir(runtime) / f"{name}.pem").exists()


def _write_bundle(runtime: Runtime, drop: Sequence[str] = ()) -> None:
    """The root CRL and every anchor, in one file for ``ssl_crl``."""
    for name in drop:
        (anchor_dir(runtime) / f"{name}.pem").unlink(missing_ok=True)
    root = runtime.crl_dir / f"{ROOT_CRL_NAME}.pem"
    parts = [root.read_bytes()] if root.exists() else []
    anchors = {p.stem: p for p in anchor_dir(runtime).glob("*.pem")}
    parts += [anchors[name].read_bytes() for name in sorted(anchors)]
    # A CA from before anchors existed keeps its published CRL here until rotation gives it
    # one (certs.rotation): without any CRL for it nginx would refuse its whole chain.
    parts += [p.read_bytes() for p in sorted(runtime.crl_dir.glob("*.pem"))
              if p.stem != ROOT_CRL_NAME and p.stem not in anchors and p.stem not in drop]  # fmt: skip
    _atomic_write(bundle_path(runtime), b"".join(parts), mode=BUNDLE_MODE)


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


# What nginx reads that Sluice changes while it runs: the CRL bundle (``ssl_crl``), the trust
# bundle (``ssl_client_certificate``) and the server certificate (renewed by the first node's
# start), paths as certs.platform_pki.PlatformPki names them (it imports this module).
def _nginx_inputs(runtime: Runtime) -> tuple[Path, ...]:
    return bundle_path(runtime), runtime.pki_dir / "trust-bundle.pem", runtime.pki_dir / "web.crt"


def nginx_inputs_fingerprint(runtime: Runtime) -> str:
    digest = hashlib.sha256()
    for path in _nginx_inputs(runtime):
        try:
            digest.update(path.read_bytes())
        except FileNotFoundError:
            digest.update(b"-")
        digest.update(b"\0")
    return digest.hexdigest()


def _loaded_marker(runtime: Runtime) -> Path:
    """The fingerprint of the inputs this node's nginx last (re)loaded.  Per node (its run
    directory): every web node has its own nginx to bring up to date."""
    return runtime.run_dir / "nginx-inputs.sha256"


def note_nginx_inputs_loaded(runtime: Runtime) -> None:
    """Record the inputs as loaded: called just before nginx starts (it reads them then)."""
    runtime.run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(_loaded_marker(runtime), nginx_inputs_fingerprint(runtime).encode(), mode=0o600)


def _nginx_master(runtime: Runtime) -> int | None:
    try:
        pid = int((runtime.run_dir / "nginx.pid").read_text().strip())
        # A stale pid file may name an unrelated process by now: check before signalling.
        if b"nginx: master" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
    except (OSError, ValueError):
        return None
    return pid


def reload_nginx(runtime: Runtime, wait: float = 5.0) -> bool:
    """SIGHUP this node's nginx master (if it runs) so new CRLs apply to new handshakes, no
    restart, and wait (bounded) until only workers with the new configuration remain.

    Only when the CRL or trust bundle differs from what it last loaded: the process that
    changed a CRL and the node's launcher (``follow_nginx_inputs``, which brings every node
    up to date, whichever node made the change) both call this, and a reload ends every
    device's keep-alive connection, so one change must cost one reload per node.  The
    check and the reload hold the node's reload lock: whoever comes second finds the
    marker current (and the reload complete).  Returns whether it reloaded."""
    if _nginx_master(runtime) is None:
        return False
    with open(runtime.run_dir / ".nginx-reload.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fingerprint = nginx_inputs_fingerprint(runtime)
        try:
            if _loaded_marker(runtime).read_text() == fingerprint:
                return False
        except OSError:
            pass  # no marker (nginx started by other means): reload
        pid = _nginx_master(runtime)
        if pid is None:
            return False
        before = _children(pid)
        # The marker first: a change made after this point differs from it and reloads again.
        _atomic_write(_loaded_marker(runtime), fingerprint.encode(), mode=0o600)
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError:
            return False
        # Done when workers with the new configuration run and every old one has stopped
        # accepting: until an old worker has processed its shutdown it may still accept a new
        # connection.  An old worker that is finishing open connections (keep-alive clients,
        # or the very request that revoked a certificate) retitles itself "worker process is
        # shutting down" once it has closed its listening sockets; waiting for it to exit would
        # hold such a request for the whole timeout.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            now = _children(pid)
            if (now - before) and all(_shutting_down(old) for old in now & before):
                break
            time.sleep(0.02)
        return True


# How often a node's launcher looks at the CRL and trust bundles (a stat of two files), and
# how often it also hashes them whatever their stat says (a file system that keeps mtimes
# coarse, or a file replaced within the same tick).  Bound on a change made through another
# node reaching this node's nginx: FOLLOW_PERIOD plus the reload itself.
FOLLOW_PERIOD = 1.0
FOLLOW_FULL_CHECK_EVERY = 30


def _inputs_stat(runtime: Runtime) -> tuple[tuple[int, int, int], ...]:
    stats = []
    for path in _nginx_inputs(runtime):
        try:
            info = path.stat()
            stats.append((info.st_ino, info.st_size, info.st_mtime_ns))
        except OSError:
            stats.append((0, 0, 0))
    return tuple(stats)


def follow_nginx_inputs(runtime: Runtime, stop: threading.Event, period: float = FOLLOW_PERIOD) -> None:
    """Until ``stop`` is set: reload this node's nginx whenever the CRL or trust bundle
    changes, whichever process (on whichever node sharing the state directory) changed it.
    Run by every node's launcher; the node that made a change has usually reloaded already,
    and reload_nginx then does nothing."""
    seen: tuple[tuple[int, int, int], ...] = ()  # the first tick checks: a change during start-up
    tick = 0
    while not stop.wait(period):
        tick += 1
        now = _inputs_stat(runtime)
        if now != seen or tick % FOLLOW_FULL_CHECK_EVERY == 0:
            try:
                reload_nginx(runtime)
                reload_mosquitto(runtime)
                seen = now
            except Exception as exc:  # noqa: BLE001 - the follower must outlive any one failure; the next tick retries
                log.warning("could not reload nginx after a CRL change: %s: %s", type(exc).__name__, exc)


# Mosquitto (the MQTT devices' broker) reads the same CRL and trust bundles: SIGHUP makes it
# re-read both for new connections (seen with Debian's 2.0.11: a certificate revoked in the
# CRL file is refused at the next handshake after the signal) without ending open sessions.
def _mosquitto_marker(runtime: Runtime) -> Path:
    return runtime.run_dir / "mosquitto-inputs.sha256"


def note_mosquitto_inputs_loaded(runtime: Runtime) -> None:
    """Record the inputs as loaded: called just before Mosquitto starts (it reads them then)."""
    runtime.run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(_mosquitto_marker(runtime), nginx_inputs_fingerprint(runtime).encode(), mode=0o600)


def reload_mosquitto(runtime: Runtime) -> bool:
    """SIGHUP this platform's Mosquitto (if it runs) when the CRL or trust bundle differs from
    what it last loaded.  Returns whether it signalled."""
    try:
        pid = int((runtime.run_dir / "mosquitto.pid").read_text().strip())
        if b"mosquitto" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return False  # a stale pid file
    except (OSError, ValueError):
        return False
    with open(runtime.run_dir / ".mosquitto-reload.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fingerprint = nginx_inputs_fingerprint(runtime)
        try:
            if _mosquitto_marker(runtime).read_text() == fingerprint:
                return False
        except OSError:
            pass
        _atomic_write(_mosquitto_marker(runtime), fingerprint.encode(), mode=0o600)
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError:
            return False
        return True


def _shutting_down(pid: int) -> bool:
    try:
        return b"shutting down" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # gone meanwhile


def root_crl_entries(runtime: Runtime) -> list[ca.Revoked]:
    path = runtime.crl_dir / f"{ROOT_CRL_NAME}.crl"
    if not path.exists():
        return []
    crl = x509.load_der_x509_crl(path.read_bytes())
    entries = []
    for item in crl:
        try:
            reason = item.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            reason = None
        entries.append(ca.Revoked(item.serial_number, item.revocation_date_utc, reason))
    return entries


def root_crl_next_update(runtime: Runtime) -> dt.datetime | None:
    """The published root CRL's nextUpdate (None: not published yet, or unreadable)."""
    try:
        crl = x509.load_der_x509_crl((runtime.crl_dir / f"{ROOT_CRL_NAME}.crl").read_bytes())
    except (OSError, ValueError):
        return None
    return crl.next_update_utc


def root_crl_due(runtime: Runtime, *, now: dt.datetime | None = None) -> bool:
    """Whether the root CRL must be signed (again): never published, unreadable, nginx's
    bundle missing, or its nextUpdate less than ``ROOT_CRL_REFRESH_BEFORE`` away."""
    if not bundle_path(runtime).exists():
        return True
    try:
        crl = x509.load_der_x509_crl((runtime.crl_dir / f"{ROOT_CRL_NAME}.crl").read_bytes())
    except (OSError, ValueError):
        return True
    next_update = crl.next_update_utc
    return next_update is None or next_update <= (now or dt.datetime.now(dt.UTC)) + ROOT_CRL_REFRESH_BEFORE


def publish_root_crl(
    runtime: Runtime, root: ca.Issuer, revoke: Sequence[ca.Revoked] = (), drop_anchors: Sequence[str] = ()
) -> x509.CertificateRevocationList:
    """Re-sign the root CRL with a fresh nextUpdate, keeping every earlier entry and adding
    ``revoke`` (revoked CAs' anchors, ``drop_anchors``, leave nginx's bundle).  Called at
    every platform start, on CA revocation, and on a schedule; nginx re-reads it."""
    with _locked(runtime):
        entries = {e.serial: e for e in root_crl_entries(runtime)}
        for item in revoke:
            entries.setdefault(item.serial, item)
        # CRL numbers must increase (RFC 5280 §5.2.3); the clock does that across restarts.
        crl = ca.build_crl(issuer=root, revoked=list(entries.values()), number=time.time_ns() // 1000,
                           valid_for=ROOT_CRL_VALIDITY)  # fmt: skip
        _write_published(runtime, ROOT_CRL_NAME, crl)
        _write_bundle(runtime, drop=drop_anchors)
    reload_nginx(runtime)
    reload_mosquitto(runtime)
    return crl
