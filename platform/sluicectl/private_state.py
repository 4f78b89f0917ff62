"""The state directory is private: what may be open to other users, and the check that
nothing else is.

Every Sluice process runs with umask 077 (``config.env.use_private_umask``), so what it creates
is owner-only.  ``PUBLIC`` is the whole list of exceptions, each with the reason it must be
open; the launcher sets those modes at every start (``open_public_paths``) and refuses to
start when anything else is open to group or others (``refuse_open_state``).

Why refuse rather than repair: a file found open may already have been read (the database's
sessions and token hashes, a tenant's telemetry in Kafka's log, the key-encryption key).  A
launcher that quietly tightened it would hide that exposure from the one person who can judge
it, and could not tell a mistake from a mode someone set on purpose.  One command fixes all
(``chmod -R go-rwx <state>``); the public paths are Sluice's own and are re-opened at start.

nginx's workers run as ``nobody`` when nginx starts as root (``components._nginx_user_directive``):
they parse every byte that arrives from the network, so they get no right they do not need --
they can reach the public paths below and nothing else under the state directory.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from config.env import Runtime
from sluicectl.errors import LaunchError

GROUP_OTHER = 0o077


@dataclass(frozen=True)
class PublicPath:
    """A path (a glob, relative to the state directory; "." is the directory itself) that
    group and others may reach.  ``tree``: everything below it too (directories
    ``dir_mode``, files ``file_mode``, sockets any mode).  ``open_at_start``: the launcher
    sets these modes at every start; otherwise the writer sets them and the check allows them."""

    pattern: str
    dir_mode: int
    file_mode: int
    tree: bool
    open_at_start: bool
    why: str


PUBLIC: tuple[PublicPath, ...] = (
    PublicPath(".", 0o711, 0, tree=False, open_at_start=True,
               why="nginx's workers pass through it to the public paths below; others cannot list it"),
    PublicPath("crl", 0o755, 0o644, tree=True, open_at_start=True,
               why="CRLs are public and signed (RFC 5280); nginx's workers serve them at the "
                   "distribution points every certificate names"),
    PublicPath("oauth-public", 0o755, 0o644, tree=True, open_at_start=True,
               why="the JWKS: the public keys that verify Sluice's tokens, served by nginx's workers"),
    PublicPath("pki-public", 0o755, 0o644, tree=True, open_at_start=True,
               why="a copy of the platform root CA's certificate (public by nature), served by "
                   "nginx's workers at http://<host>:<crl port>/pki/root-ca.crt"),
    PublicPath("static", 0o755, 0o644, tree=True, open_at_start=True,
               why="the console's CSS, JavaScript and images, served by nginx's workers"),
    PublicPath("public-sockets", 0o755, 0o644, tree=True, open_at_start=True,
               why="nginx's workers connect to the web app's socket in here; the app trusts a "
                   "request only when it carries the proxy secret"),
    PublicPath("nginx", 0o711, 0, tree=False, open_at_start=True,
               why="nginx's workers pass through it to their temporary directories"),
    PublicPath("nginx/tmp", 0o711, 0, tree=False, open_at_start=True,
               why="nginx's workers pass through it to their own directories below, which nginx "
                   "creates 0700 and gives to the worker user"),
    # Another web node (``sluice up --node web2``) keeps its own copies of the public paths
    # above that are a node's (static files, sockets, nginx's temporary directories) under
    # nodes/<node>/, for the same reasons.
    PublicPath("nodes", 0o711, 0, tree=False, open_at_start=True,
               why="nginx's workers of another web node pass through it to that node's public paths"),
    PublicPath("nodes/*", 0o711, 0, tree=False, open_at_start=True,
               why="nginx's workers of that node pass through it to its public paths below"),
    PublicPath("nodes/*/static", 0o755, 0o644, tree=True, open_at_start=True,
               why="the console's static files, served by that node's nginx workers"),
    PublicPath("nodes/*/public-sockets", 0o755, 0o644, tree=True, open_at_start=True,
               why="that node's nginx workers connect to its web and ingest sockets in here"),
    PublicPath("nodes/*/nginx", 0o711, 0, tree=False, open_at_start=True,
               why="that node's nginx workers pass through it to their temporary directories"),
    PublicPath("nodes/*/nginx/tmp", 0o711, 0, tree=False, open_at_start=True,
               why="as nginx/tmp, for that node's nginx workers"),
    PublicPath("pki/*.crt", 0, 0o644, tree=False, open_at_start=False,
               why="certificates are public by nature (written by certs/platform_pki.py; the pki "
                   "directory itself stays 0700)"),
    PublicPath("pki/trust-bundle.pem", 0, 0o644, tree=False, open_at_start=False,
               why="CA certificates only, public by nature (inside the 0700 pki directory)"),
    PublicPath("run/mqtt-bridge.sock", 0, 0o770, tree=False, open_at_start=False,
               why="Mosquitto binds its Unix-socket listener (the MQTT bridge's) under a umask of its "
                   "own, 0007, with no option to change it; the socket is inside the 0700 run "
                   "directory, so nobody but Sluice's user reaches it, and the bridge authenticates on it"),
)  # fmt: skip


@dataclass(frozen=True)
class OpenPath:
    """A path under the state directory that is open to group or others beyond what it may be."""

    path: Path
    mode: int
    allowed: int  # group/other bits it may have

    @property
    def fixed_mode(self) -> int:
        return self.mode & ~(GROUP_OTHER & ~self.allowed)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def __str__(self) -> str:
        return f"{self.path} (mode {stat.S_IMODE(self.mode):04o})"


def _relative(runtime: Runtime, path: Path) -> str:
    return "." if path == runtime.state_dir else path.relative_to(runtime.state_dir).as_posix()


def public_rule(relative: str) -> PublicPath | None:
    """The PUBLIC entry that covers ``relative`` (a POSIX path under the state directory, "."
    for the directory itself): the entry itself, or a path inside its tree."""
    parts = relative.split("/")
    for entry in PUBLIC:
        if _matches(parts, entry.pattern.split("/")):
            return entry
    for entry in PUBLIC:
        pattern = entry.pattern.split("/")
        if entry.tree and len(parts) > len(pattern) and _matches(parts[: len(pattern)], pattern):
            return entry
    return None


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """Component by component, so a ``*`` never spans a ``/``."""
    return len(parts) == len(pattern) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern, strict=True))


def allowed_group_other_bits(relative: str, mode: int) -> int:
    """Which group/other permission bits a path of this kind may have: none, unless PUBLIC
    says otherwise."""
    entry = public_rule(relative)
    if entry is None:
        return 0
    if stat.S_ISSOCK(mode) and entry.tree:
        return GROUP_OTHER  # connecting to a socket needs write permission on it
    return (entry.dir_mode if stat.S_ISDIR(mode) else entry.file_mode) & GROUP_OTHER


def walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """``root`` and everything below it, without following symbolic links (their own mode
    means nothing); unreadable directories are skipped."""
    try:
        yield root, root.lstat()
    except OSError:
        return
    for directory, dirnames, filenames in os.walk(root, onerror=lambda _error: None):
        for name in (*dirnames, *filenames):
            path = Path(directory) / name
            try:
                yield path, path.lstat()
            except OSError:
                continue  # gone meanwhile


def too_open(runtime: Runtime) -> list[OpenPath]:
    """Every path under the state directory that group or others may use beyond PUBLIC."""
    found = []
    for path, info in walk(runtime.state_dir):
        if stat.S_ISLNK(info.st_mode):
            continue
        allowed = allowed_group_other_bits(_relative(runtime, path), info.st_mode)
        if info.st_mode & GROUP_OTHER & ~allowed:
            found.append(OpenPath(path, info.st_mode, allowed))
    return found


def refuse_open_state(runtime: Runtime) -> None:
    """Raise LaunchError, in one line that names the path and the fix, when anything under the
    state directory is open beyond PUBLIC.  Nothing is changed."""
    if not runtime.state_dir.exists():
        return
    found = too_open(runtime)
    if not found:
        return
    if len(found) == 1:
        (only,) = found
        kind = "directory" if only.is_dir else "file"
        raise LaunchError(
            f"{only} is open to other users, but Sluice's state is private; make the {kind} "
            f"owner-only with: chmod {stat.S_IMODE(only.fixed_mode):o} {only.path}"
        )
    examples = ", ".join(str(item) for item in found[:3])
    raise LaunchError(
        f"{len(found)} paths under {runtime.state_dir} are open to other users (e.g. {examples}), "
        f"but Sluice's state is private; make them owner-only with: chmod -R go-rwx {runtime.state_dir} "
        f"(the files that must be public are opened again at start)"
    )


def make_state_dir(runtime: Runtime) -> None:
    """Create the state directory; parents it has to create get 0755 (nginx's workers pass
    through them), the directory itself what PUBLIC says."""
    missing = [p for p in (runtime.state_dir, *runtime.state_dir.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        if directory != runtime.state_dir:
            os.chmod(directory, 0o755)  # noqa: S103 - a parent outside the state directory
    open_public_paths(runtime)


def open_public_paths(runtime: Runtime) -> None:
    """Give every existing PUBLIC path (``open_at_start``) its mode; idempotent, and cheap
    enough for every component start (the static tree is a few hundred files)."""
    for entry in PUBLIC:
        if not entry.open_at_start:
            continue
        matches = [runtime.state_dir] if entry.pattern == "." else sorted(runtime.state_dir.glob(entry.pattern))
        for path in matches:
            if path.is_symlink() or not path.is_dir():
                continue
            os.chmod(path, entry.dir_mode)
            if not entry.tree:
                continue
            for below, info in walk(path):
                if below == path or stat.S_ISLNK(info.st_mode) or stat.S_ISSOCK(info.st_mode):
                    continue
                os.chmod(below, entry.dir_mode if stat.S_ISDIR(info.st_mode) else entry.file_mode)
