"""What the benchmarks share: services started for a run (a Mosquitto of their own, a
database of their own, a `vigie run` process), CPU and memory read from /proc, percentiles,
and the ratios they print.

The scripts run as `python tests/bench/X.py`: each puts the repository root on sys.path
before importing this module as `tests.bench._common` (a camera benchmark's node process
imports `tests.bench.cameras` from the root, so a bare `import _common` would not do).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import asyncpg

from tests.pg import PG_ADMIN_DSN, create_database, drop_database

__all__ = [
    "CLK_TCK",
    "PG_ADMIN_DSN",
    "ROOT",
    "CpuWindow",
    "always_open",
    "cpu_seconds",
    "create_database",
    "descendants",
    "drop_database",
    "free_port",
    "loadavg",
    "machine_busy",
    "percentiles",
    "postgres_cpu",
    "quantile",
    "quantiles",
    "ratio",
    "rss_pss_uss",
    "run_bench",
    "start_broker",
    "start_vigie",
    "stop_vigie",
    "wait_sql",
]

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- services -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A Mosquitto of the run's own on a free port: `max_queued_messages 0` (no limit: the
    default of 1000 would drop QoS 1 messages queued for a slow subscriber),
    `max_inflight_messages 0`, no persistence."""
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def always_open() -> str:
    """Opening hours of a site open around the clock, as a YAML flow mapping: sensor events
    there raise what they raise by day, whenever the benchmark runs."""
    return ", ".join(f'{d}: "00:00-24:00"' for d in ("mon", "tue", "wed", "thu", "fri",
                                                      "sat", "sun"))


def start_vigie(config: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """`vigie run --config CONFIG` in a process of its own (unbuffered, from the root)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vigie", "run", "--config", str(config)],
                            env=env, cwd=ROOT, **popen)


async def stop_vigie(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, and wait for the node's graceful shutdown (off the event loop)."""
    proc.terminate()
    await asyncio.to_thread(proc.wait, timeout)


async def wait_sql(dsn: str, sql: str, timeout: float = 60) -> Any:
    """Poll `sql` until it returns something truthy (the database may not exist yet, or
    the node not have migrated it); return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(dsn)
            try:
                value = await conn.fetchval(sql)
                if value:
                    return value
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(sql)


# --- /proc ----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat


def rss_pss_uss(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, USS) in kB from smaps_rollup. RSS counts the pages of shared libraries once
    per process that maps them; PSS splits them between those processes; USS (private pages:
    heaps, arenas, stacks) leaves them out."""
    rss = pss = uss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    uss += int(line.split()[1])
    except OSError:
        pass
    return rss, pss, uss


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (scanning /proc: no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def postgres_cpu() -> float:
    """CPU seconds used so far by every process named postgres on this machine."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name.startswith("postgres"):
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat (steal counts as busy)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest, already in user
    return total - idle, total


def loadavg() -> str:
    """The 1, 5 and 15 min load averages: the machine is shared, its figures upper bounds."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class CpuWindow:
    """CPU seconds of a set of processes, and the machine's busy share, over a window."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = {p: cpu_seconds(p) for p in pids}
        self.busy0, self.total0 = machine_busy()
        self.t0 = time.monotonic()

    def stop(self) -> tuple[float, float, float]:
        """(cores used by the processes, seconds, machine busy share of all its cores)."""
        end = {p: cpu_seconds(p) for p in self.pids}
        elapsed = time.monotonic() - self.t0
        busy1, total1 = machine_busy()
        # Cores used by each process still there, for a breakdown (node and its workers).
        self.used = {p: max(0.0, end[p] - self.start[p]) / elapsed for p in self.pids
                     if end[p] > 0}
        share = (busy1 - self.busy0) / max(total1 - self.total0, 1)
        return sum(self.used.values()), elapsed, share


# --- figures --------------------------------------------------------------------------------

def quantile(sorted_values: list[float], q: float) -> float:
    """The value at rank int(q·n) of sorted values (no interpolation: a value that was
    measured); NaN when there is none."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def quantiles(values: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of unsorted values (NaN when there is none)."""
    ordered = sorted(values)
    return {"n": len(ordered), "p50": quantile(ordered, 0.50), "p99": quantile(ordered, 0.99),
            "max": ordered[-1] if ordered else float("nan")}


def percentiles(values: list[float]) -> tuple[float, float, float]:
    """(median, p99, max) of unsorted values; the median interpolates between the two
    middle values, as statistics.median does."""
    ordered = sorted(values)
    return statistics.median(ordered), quantile(ordered, 0.99), ordered[-1]


def ratio(value: float, base: float) -> float:
    """value / base, NaN when the baseline measured nothing (rather than a crash at the end
    of a long run)."""
    return value / base if base else float("nan")


def run_bench(bench: Callable[[argparse.Namespace, Path], Awaitable[int]],
              args: argparse.Namespace, prefix: str) -> NoReturn:
    """Run `bench(args, workdir)` in a fresh work directory (kept, with the nodes' logs, when
    `args.keep`), then exit with its code."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        code = asyncio.run(bench(args, workdir))
    finally:
        if args.keep:
            print(f"logs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)
