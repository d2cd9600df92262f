"""What the fault tests drive: a PostgreSQL cluster of their own (stopped and started at
will), `vigie run` as a real process, and a device-side publisher at a steady rate.

    cluster = PgCluster(base); cluster.init(); cluster.start(); cluster.stop()
    vigie = VigieProcess(config_path, log_path); vigie.start(); vigie.kill()
    load = LoadPublisher(mqtt_url, topic_of, rate=1000); load.start(); load.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def _pg_bin() -> Path:
    configured = os.environ.get("VIGIE_PG_BIN")
    if configured:
        return Path(configured)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not versions:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql "
                           "(apt-get install postgresql)")
    return versions[-1]


class PgCluster:
    """A PostgreSQL cluster of the tests' own (initdb, pg_ctl), so that stopping it leaves
    the shared server alone. As root, it runs as `postgres` (initdb refuses root)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.port = free_port()
        self.bin = _pg_bin()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*self._as, *args], timeout=timeout, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): "
                               f"{done.stderr.strip()}")

    def init(self) -> None:
        """Its base directory's parent must be reachable by `postgres` (not 0700)."""
        self.base.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.base, "postgres", "postgres")
            self.base.chmod(0o755)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} "
                "-c max_connections=200 -c fsync=on -c synchronous_commit=on")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-o", opts, "-w", "-t", "60", "start", timeout=90)
        wait_port("127.0.0.1", self.port)

    def stop(self, mode: str = "fast") -> None:
        """`fast`: clients are cut off, the server shuts down cleanly; `immediate`: a crash
        (recovery at the next start)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                  "-t", "60", "stop", timeout=90)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running():
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def write_config(path: Path, *, dsn: str, mqtt_url: str, data_dir: Path, sites: list[Any],
                 **sections: Any) -> Path:
    raw: dict[str, Any] = {
        "node": {"name": f"faults-{uuid.uuid4().hex[:6]}", "data_dir": str(data_dir),
                 "camera_workers": 1},
        "database": {"dsn": dsn},
        "mqtt": {"url": mqtt_url, "client_id": f"vigie-faults-{uuid.uuid4().hex[:8]}",
                 "topic_prefix": "vigie"},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "sites": sites,
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@dataclass
class Peaks:
    """Sampled while the process runs."""

    rss: int = 0  # bytes (VmHWM: the kernel's own high-water mark)
    spool_bytes: float = 0.0
    spool_messages: float = 0.0
    ingest_queue: float = 0.0


class VigieProcess:
    """`python -m vigie run --config FILE` as a child process, with its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        raw = yaml.safe_load(config.read_text())
        self.api = "http://" + raw["api"]["listen"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.peaks = Peaks()
        self._sampler: threading.Thread | None = None
        self._sampling = threading.Event()

    def start(self, ready_timeout: float = 60, *, ready: bool = True) -> None:
        """Start, and wait until ready (`ready=False`: until merely alive, /healthz)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIE_")}
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vigie", "run", "--config", str(self.config)],
                cwd=ROOT, env=env, stdout=sink, stderr=sink)
        deadline = time.monotonic() + ready_timeout
        while not (self.ready() if ready else self.alive()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"vigie exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vigie not ready in {ready_timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)
        self.peaks = Peaks()  # of this process
        self._sample_once()
        self._sampling.clear()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str, token: str | None = None, method: str = "GET",
            timeout: float = 5) -> tuple[int, Any]:
        request = urllib.request.Request(self.api + path, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                body = r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def alive(self) -> bool:
        try:
            status, _ = self.get("/healthz", timeout=2)
        except OSError:
            return False
        return status == 200

    def ready(self) -> bool:
        try:
            status, _ = self.get("/readyz", timeout=2)
        except OSError:
            return False
        return status == 200

    def metrics(self) -> dict[str, float]:
        """`name{labels}` → value, from /metrics."""
        status, text = self.get("/metrics")
        assert status == 200
        out: dict[str, float] = {}
        for line in str(text).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def _sample(self) -> None:
        while not self._sampling.is_set():
            self._sample_once()
            self._sampling.wait(0.2)

    def _sample_once(self) -> None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            m = re.search(r"VmHWM:\s+(\d+) kB", status)
            if m:
                self.peaks.rss = max(self.peaks.rss, int(m.group(1)) * 1024)
            metrics = self.metrics()
        except (OSError, AssertionError, ValueError):
            return
        p = self.peaks
        p.spool_bytes = max(p.spool_bytes, metrics.get("vigie_spool_bytes", 0))
        p.spool_messages = max(p.spool_messages, metrics.get("vigie_spool_messages", 0))
        p.ingest_queue = max(p.ingest_queue,
                             metrics.get('vigie_queue_length{queue="ingest"}', 0))

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._sampling.set()
        return code

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._sampling.set()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


Payload = Callable[[int], tuple[str, dict[str, Any] | bytes]]


@dataclass
class LoadPublisher:
    """A device-side client publishing `rate` messages a second (QoS 1) from a thread; each
    message is numbered, `payload(n)` gives its topic and body. `acked` holds the numbers
    the broker acknowledged: the broker then owes them to vigie."""

    mqtt_url: str
    payload: Payload
    rate: float = 1000.0
    attempted: int = 0
    acked: set[int] = field(default_factory=set)
    _mids: dict[int, int] = field(default_factory=dict)
    # Acknowledged before `_mids` knew them (the broker answered before `publish` returned),
    # with when: a stale one (a duplicate PUBACK) must not pass for a later reuse of its mid.
    _early: dict[int, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    limit: int | None = None  # stop after that many messages

    def __post_init__(self) -> None:
        host, port = self.mqtt_url.removeprefix("mqtt://").split(":")
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"load-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)
        self.client.max_inflight_messages_set(5_000)
        self.client.max_queued_messages_set(0)  # unbounded: kept across broker restarts
        self.client.reconnect_delay_set(0.2, 2)
        self.client.on_publish = self._on_publish
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        # paho calls this holding its own lock, which `publish` takes too: never call paho
        # while holding ours.
        with self._lock:
            n = self._mids.pop(mid, None)
            if n is None:
                self._early[mid] = time.monotonic()
            else:
                self.acked.add(n)

    def publish_one(self) -> None:
        n = self.attempted
        topic, body = self.payload(n)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        info = self.client.publish(topic, raw, qos=1)
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is not None and time.monotonic() - early < 1.0:
                self.acked.add(n)
            else:
                self._mids[info.mid] = n
            self.attempted += 1

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            if self.limit is not None:
                due = min(due, self.limit)
            while self.attempted < due:
                self.publish_one()
            if self.limit is not None and self.attempted >= self.limit:
                return
            self._stop.wait(0.01)

    def start(self) -> LoadPublisher:
        self._thread = threading.Thread(target=self._run, daemon=True, name="load")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def wait_acked(self, timeout: float = 60) -> None:
        """Until the broker has acknowledged everything published (all `limit` of them,
        when there is a limit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                done = self.limit is None or self.attempted >= self.limit
                if done and len(self.acked) >= self.attempted:
                    return
            time.sleep(0.05)
        raise AssertionError(f"the broker acknowledged {len(self.acked)} of "
                             f"{self.attempted} messages in {timeout}s")

    def close(self) -> None:
        self.stop()
        self.client.disconnect()
        self.client.loop_stop()
