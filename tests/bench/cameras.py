"""Camera watching at scale: vigie's CPU and memory per camera against `ffmpeg -skip_frame
nokey` on the same RTSP streams, with staleness and offline detection under that load.

    .venv/bin/python tests/bench/cameras.py [--cameras 100] [--cameras 200 --cameras 300]
                                            [--base-cameras 50] [--workers 2 --workers 4]
                                            [--window 30] [--warmup 35] [--soak 0]
                                            [--no-ffmpeg]

The RTSP test server (tests/cameras/rtsp_server.py, GStreamer under the system python3)
serves N clip mounts, one media per client, no encoder: the cached test clip (640×360,
10 fps, a keyframe every 10 frames), long enough for the longest connection of the run.

Per camera count N (and per worker count, vigie's default for N unless `--workers`):

base     a node (in a process of its own, `running_node`, no MQTT) with N/2 cameras
         (`--base-cameras`), settled as below; its memory: the base of the slope.
vigie    a node with N cameras, all checks on with their defaults but `learn_for` (10 s, so
         the reference is learned and the blurred/moved checks run in the windows). Once
         every camera is `ok` with its reference learned, and the warm-up is over:
  alone  vigie alone (with the RTSP server): over the window, the CPU time (utime + stime
         from /proc/<pid>/stat) of the node and its workers; their memory sampled every
         second (median); how old the sample each camera was judged from was (the node's
         judging loop is instrumented in the node process: sample and packet age at every
         judgement, event-loop lag).
  shared N `ffmpeg -skip_frame nokey -rtsp_transport tcp -i URL -f null -` clients on the
         same mounts, ramped up 25 a second; after their warm-up, one window over which the
         CPU times of vigie's processes and of the ffmpeg processes are both taken: the
         vigie/ffmpeg ratio. Both meet the same machine in the same seconds (on 2 cores the
         RTSP server, vigie and ffmpeg compete, and other people's load comes and goes), so
         the ratio does not depend on when each was measured. The clients are then stopped.
  then   `last_frame_at` ages through the API; offline detection: 5 mounts stopped, the time
         until the API shows each camera offline (contract: `offline_after` + 1 s), and until
         they are `ok` again once restarted.

Memory per camera is the slope: (memory of the node at N − at the base count) / (N − base),
summed over the node's processes (main, workers, multiprocessing's tracker). PSS is the
figure held against the target: RSS counts the shared libraries (FFmpeg, OpenCV, numpy:
tens of MB) once per worker, so a worker count that grows with the camera count would
charge them to the cameras; USS (private pages only) is printed as the floor.

Printed: every figure per run (machine busy share and load average included: a busy machine
makes every figure an upper bound), and a summary table with the vigie/ffmpeg ratios and
the slopes (targets: ≤ 1.2× ffmpeg at 200 cameras, ≤ 2 MB per camera, sample age ≤ 2 s at
300, offline ≤ 6 s), and whether the RTSP server is alive. `--soak S` keeps the last vigie
run going S more seconds and measures a second window: per-camera state that grows with
time shows there. The databases (one per node, on $VIGIE_TEST_PG or 127.0.0.1:5432) are
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bench._common import (  # noqa: E402
    CpuWindow,
    descendants,
    loadavg,
    quantiles,
    rss_pss_uss,
    run_bench,
)

RAMP_PER_SECOND = 25
OFFLINE_STOPPED = 5
LEARN_FOR = "10s"
OFFLINE_AFTER = 5.0  # the default, which the bench does not change
CAMERAS_PER_SITE = 10


def memory_of(pids: list[int]) -> tuple[int, int, int]:
    """(RSS, PSS, USS) in kB summed over processes."""
    total = [0, 0, 0]
    for pid in pids:
        for i, value in enumerate(rss_pss_uss(pid)):
            total[i] += value
    return total[0], total[1], total[2]


# --- the node under test, in a process of its own ----------------------------------------------

def node_main() -> None:
    """Entry point of the node process: `python -c "...; node_main()" CONFIG.json`.

    Started with `-c`, not as a script, so that the camera workers it spawns import vigie
    only, as under `vigie run`, and not this benchmark. Speaks JSON lines: one `ready` line,
    then one answer per command read on stdin (stats, refs, quit).
    """
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s node %(levelname)s %(name)s %(message)s")
    raw = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(_serve_node(raw))


class _JudgeProbe:
    """Wraps the supervisor's `tick` (an instance attribute shadows the method) to record,
    at every judgement, how old each camera's sample and last packet were."""

    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor
        self.tick = supervisor.tick
        supervisor.tick = self._tick
        self.reset()

    def reset(self) -> None:
        self.sample_age: list[float] = []
        self.packet_age: list[float] = []
        self.tick_seconds: list[float] = []
        self.tick_gaps: list[float] = []
        self.not_ok: Counter[str] = Counter()
        self.last_tick: float | None = None
        self.lag: list[float] = []

    def _tick(self) -> None:
        now = time.time()
        if self.last_tick is not None:
            self.tick_gaps.append(now - self.last_tick)
        self.last_tick = now
        for state in self.supervisor.cameras.values():
            s = state.sample
            if s is None:
                continue
            self.sample_age.append(now - s.at)
            if state.health.state == "ok" and s.last_packet_at is not None:
                self.packet_age.append(now - s.last_packet_at)
            if state.health.state != "ok":
                self.not_ok[f"{state.health.state}:{','.join(sorted(state.health.reasons))}"
                            ] += 1
        started = time.perf_counter()
        self.tick()
        self.tick_seconds.append(time.perf_counter() - started)

    def stats(self) -> dict[str, Any]:
        return {"sample_age": quantiles(self.sample_age),
                "packet_age": quantiles(self.packet_age),
                "tick_ms": {k: v * 1000 if k != "n" else v
                            for k, v in quantiles(self.tick_seconds).items()},
                "tick_gap_max": max(self.tick_gaps, default=float("nan")),
                "loop_lag_ms": {k: v * 1000 if k != "n" else v
                                for k, v in quantiles(self.lag).items()},
                "not_ok_judgements": dict(self.not_ok.most_common(10))}

    async def watch_loop_lag(self, every: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(every)
            self.lag.append(loop.time() - started - every)


async def _serve_node(raw: dict[str, Any]) -> None:
    from vigie.app import running_node
    from vigie.config import parse_config
    from vigie.store._tokens import create_token

    config = parse_config(raw)
    async with running_node(config, with_mqtt=False) as node:
        async with node.store.connection() as conn:
            token, _ = await create_token(conn, name="bench", role="technician", sites=None,
                                          expires_at=None)
        probe = _JudgeProbe(node.cameras) if node.cameras is not None else None
        lag = asyncio.create_task(probe.watch_loop_lag()) if probe else None
        _answer({"ready": True, "api": node.api_url, "token": token, "pid": os.getpid()})
        try:
            while True:
                line = await asyncio.to_thread(sys.stdin.readline)
                command = line.strip()
                if command in ("", "quit"):
                    break
                if command == "stats":
                    _answer(probe.stats() if probe else {})
                    if probe:
                        probe.reset()
                elif command == "refs":
                    async with node.store.connection() as conn:
                        _answer({"refs": await conn.fetchval(
                            "SELECT count(*) FROM camera_references")})
                else:
                    _answer({"error": f"unknown command {command!r}"})
        finally:
            if lag is not None:
                lag.cancel()


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class NodeProcess:
    """The benchmark's handle on a node process."""

    def __init__(self, raw_config: dict[str, Any], workdir: Path) -> None:
        config_path = workdir / f"node-{time.monotonic_ns()}.json"
        config_path.write_text(json.dumps(raw_config))
        self.stderr = open(workdir / "node.log", "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.bench.cameras import node_main; node_main()",
             str(config_path)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1)
        ready = self._read(timeout=120)
        if not ready.get("ready"):
            raise RuntimeError(f"node did not start: {ready}")
        self.api: str = ready["api"]
        self.token: str = ready["token"]
        self.pid: int = self.proc.pid

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(f"no answer from the node process (exit {self.proc.poll()}); "
                               f"see {self.stderr.name}")
        return dict(json.loads(result[0]))

    def ask(self, command: str, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def pids(self) -> list[int]:
        """The node and everything it started (camera workers, multiprocessing's tracker)."""
        return [self.pid, *descendants(self.pid)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


# --- the benchmark ----------------------------------------------------------------------------

@dataclass
class Memory:
    """Memory of the node's processes (kB, summed), sampled every second over a window: the
    median of the samples, since each worker gives its free pages back every few seconds."""

    rss: float = 0.0
    pss: float = 0.0
    uss: float = 0.0

    @classmethod
    def median(cls, samples: list[tuple[int, int, int]]) -> Memory:
        if not samples:
            return cls()
        return cls(*(statistics.median(s[i] for s in samples) for i in range(3)))

    def minus(self, other: Memory) -> Memory:
        return Memory(self.rss - other.rss, self.pss - other.pss, self.uss - other.uss)

    def per(self, n: float) -> str:
        """MB per camera, all three."""
        return (f"RSS {self.rss / 1024 / n:.2f} / PSS {self.pss / 1024 / n:.2f} / "
                f"USS {self.uss / 1024 / n:.2f} MB")


@dataclass
class Run:
    """The figures of one node with N cameras, and of N ffmpeg clients in the shared window."""

    cameras: int
    workers: int = 0  # camera worker processes the node ran
    vigie_alone: float = 0.0  # cores, vigie alone on the machine (with the RTSP server)
    vigie_shared: float = 0.0  # cores, in the window it shared with the ffmpeg clients
    ffmpeg_shared: float = 0.0  # cores, the N ffmpeg clients in that window
    ffmpeg_dead: int = 0
    memory: Memory = field(default_factory=Memory)
    base_cameras: int = 0
    base_memory: Memory | None = None  # a node with `base_cameras`, for the slope
    server_cores: float = 0.0
    busy_alone: float = 0.0
    busy_shared: float = 0.0
    load: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.vigie_shared / self.ffmpeg_shared if self.ffmpeg_shared else float("nan")

    @property
    def slope(self) -> Memory | None:
        """Memory per added camera, from the base node to this one."""
        if self.base_memory is None or self.cameras <= self.base_cameras:
            return None
        d = self.memory.minus(self.base_memory)
        n = self.cameras - self.base_cameras
        return Memory(d.rss / n, d.pss / n, d.uss / n)


def node_config(dsn: str, urls: list[str], workers: int | None, data_dir: Path
                ) -> dict[str, Any]:
    sites = []
    for start in range(0, len(urls), CAMERAS_PER_SITE):
        n = start // CAMERAS_PER_SITE
        sites.append({
            "id": f"clg-bench-{n:03d}", "name": f"Collège {n}", "uai": f"{780000 + n:07d}B",
            "cameras": [{"id": f"cam-{i:03d}", "name": f"Caméra {i}", "zone": "cour", "url": u}
                        for i, u in enumerate(urls[start:start + CAMERAS_PER_SITE], start)],
        })
    return {
        "node": {"name": f"bench-{os.getpid()}", "data_dir": str(data_dir),
                 **({"camera_workers": workers} if workers else {})},
        "database": {"dsn": dsn},
        "api": {"listen": "127.0.0.1:0"},
        "defaults": {"camera": {"learn_for": LEARN_FOR}},
        "sites": sites,
    }


async def cameras(http: Any) -> list[dict[str, Any]]:
    async with http.get("/api/v1/cameras") as r:
        r.raise_for_status()
        return list((await r.json())["items"])


def iso_age(now: float, iso: str | None) -> float | None:
    from datetime import datetime

    return None if iso is None else now - datetime.fromisoformat(iso).timestamp()


async def wait_states(http: Any, predicate: Any, timeout: float) -> tuple[bool, float, Any]:
    """Poll the camera list until `predicate(items)`; (met, seconds waited, last items)."""
    started = time.monotonic()
    items: list[dict[str, Any]] = []
    while time.monotonic() - started < timeout:
        items = await cameras(http)
        if predicate(items):
            return True, time.monotonic() - started, items
        await asyncio.sleep(0.5)
    return False, time.monotonic() - started, items


class FfmpegClients:
    """N `ffmpeg -skip_frame nokey` clients, the baseline: what reading and decoding the
    keyframes of the same streams costs FFmpeg alone (its own decoder defaults included)."""

    def __init__(self, urls: list[str], workdir: Path) -> None:
        self.log = open(workdir / "ffmpeg.log", "ab")  # noqa: SIM115 - closed in stop()
        self.procs: list[subprocess.Popen[bytes]] = []
        for url in urls:
            self.procs.append(subprocess.Popen(
                ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
                 "-skip_frame", "nokey", "-rtsp_transport", "tcp", "-i", url, "-f", "null",
                 "-"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log))
            time.sleep(1 / RAMP_PER_SECOND)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def dead(self) -> int:
        return sum(p.poll() is not None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()


async def _sample_memory(pids: Any, seconds: float) -> Memory:
    """Memory of the node's processes, sampled every second for `seconds`."""
    samples = []
    deadline = time.monotonic() + seconds
    while True:
        samples.append(memory_of(pids()))
        if time.monotonic() >= deadline:
            return Memory.median(samples)
        await asyncio.sleep(1)


async def _settled(node: NodeProcess, http: Any, n: int, started: float, warmup: float
                   ) -> dict[str, Any]:
    """Every camera ok and its reference learned, then the rest of the warm-up."""
    ok, took, items = await wait_states(
        http, lambda xs: all(x["state"] == "ok" for x in xs), timeout=120)
    late = Counter((x["state"], x["error"]) for x in items if x["state"] != "ok")
    deadline = time.monotonic() + 90
    refs = node.ask("refs")["refs"]
    while time.monotonic() < deadline and refs < n:
        await asyncio.sleep(1)
        refs = node.ask("refs")["refs"]
    rest = warmup - (time.monotonic() - started)
    if rest > 0:
        await asyncio.sleep(rest)
    print(f"    all {n} cameras ok: {ok} after {took:.1f} s"
          + ("" if ok else f" (not ok: {late.most_common(3)})")
          + f"; references learned: {refs}/{n}")
    return {"all_ok_after": took if ok else None, "refs": refs}


async def measure_base(server: Any, urls: list[str], workers: int | None,
                       args: argparse.Namespace, workdir: Path) -> Memory:
    """Memory of a node with fewer cameras, settled like the measured one: the slope's base."""
    import aiohttp

    from tests.pg import temporary_database

    n = len(urls)
    async with temporary_database("vigie_bench") as dsn:
        data_dir = Path(tempfile.mkdtemp(prefix="base-", dir=workdir))
        node = NodeProcess(node_config(dsn, urls, workers, data_dir), workdir)
        started = time.monotonic()
        try:
            headers = {"Authorization": f"Bearer {node.token}"}
            async with aiohttp.ClientSession(node.api, headers=headers) as http:
                await _settled(node, http, n, started, args.warmup)
                memory = await _sample_memory(node.pids, args.memory_window)
                print(f"    {len(node.pids()) - 2} camera workers; memory "
                      f"RSS {memory.rss / 1024:.0f} / PSS {memory.pss / 1024:.0f} / "
                      f"USS {memory.uss / 1024:.0f} MB (node and workers)")
        finally:
            node.stop()
    return memory


async def measure_vigie(server: Any, urls: list[str], mounts: list[str], workers: int | None,
                        args: argparse.Namespace, idle: Memory, workdir: Path,
                        soak: float) -> Run:
    import aiohttp

    from tests.pg import temporary_database

    n = len(urls)
    run = Run(n)
    async with temporary_database("vigie_bench") as dsn:
        data_dir = Path(tempfile.mkdtemp(prefix="node-", dir=workdir))
        node = NodeProcess(node_config(dsn, urls, workers, data_dir), workdir)
        started = time.monotonic()
        try:
            headers = {"Authorization": f"Bearer {node.token}"}
            async with aiohttp.ClientSession(node.api, headers=headers) as http:
                run.extra.update(await _settled(node, http, n, started, args.warmup))
                run.workers = len(node.pids()) - 2  # but the node and multiprocessing's tracker
                print(f"    {run.workers} camera workers; vigie alone, window of "
                      f"{args.window:.0f} s (load average {loadavg()})")
                await _alone(node, run, args.window, server, idle, dsn)
                if not args.no_ffmpeg:
                    await _shared(node, run, urls, args, server, workdir)
                await _api_ages(http, run)
                await _offline(http, server, mounts, run)
                if soak:
                    print(f"    soak: {soak:.0f} s more, then a second window")
                    await asyncio.sleep(soak)
                    again = Run(n, run.workers)
                    await _alone(node, again, args.window, server, idle, dsn)
                    run.extra["soak"] = again
        finally:
            node.stop()
    return run


async def _pg_backends(dsn: str) -> list[int]:
    """The PostgreSQL server processes serving the node's database (its pool)."""
    import asyncpg

    from tests.pg import PG_ADMIN_DSN

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1",
                                dsn.rpartition("/")[2].partition("?")[0])
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


async def _alone(node: NodeProcess, run: Run, window: float, server: Any, idle: Memory,
                 dsn: str) -> None:
    """vigie alone: its CPU, its memory, how old the samples its cameras were judged from."""
    node.ask("stats")  # resets the judging probe
    pids = node.pids()
    cpu = CpuWindow(pids)
    pg = CpuWindow(await _pg_backends(dsn))
    server_cpu0 = server.status()["cpu_seconds"]
    run.memory = await _sample_memory(node.pids, window)
    run.vigie_alone, elapsed, run.busy_alone = cpu.stop()
    run.load = loadavg()
    pg_cores = pg.stop()[0]
    run.server_cores = (server.status()["cpu_seconds"] - server_cpu0) / elapsed
    judged = node.ask("stats")
    node_mem = rss_pss_uss(node.pid)
    above = run.memory.minus(idle)
    run.extra.update(judged=judged, processes=len(pids), pg_cores=pg_cores,
                     node_rss_mb=node_mem[0] / 1024, above_idle=above)
    others = max(0.0, run.busy_alone * (os.cpu_count() or 1) - run.vigie_alone
                 - run.server_cores - pg_cores)
    node_cores = cpu.used.get(node.pid, 0.0)
    sa, pa = judged["sample_age"], judged["packet_age"]
    print(f"    vigie CPU {run.vigie_alone * 100:6.1f} % of a core = "
          f"{run.vigie_alone / run.cameras * 100:.3f} % per camera ({len(pids)} processes, "
          f"utime + stime: node {node_cores * 100:.1f} %, workers and the rest "
          f"{(run.vigie_alone - node_cores) * 100:.1f} %); RTSP server "
          f"{run.server_cores * 100:.1f} %; PostgreSQL for the node {pg_cores * 100:.1f} %; "
          f"machine busy {run.busy_alone * 100:.0f} % of its "
          f"cores ({others * 100:.0f} % of a core by others); load average {run.load}")
    print(f"    memory (median of {window:.0f} 1-s samples): RSS {run.memory.rss / 1024:.0f} / "
          f"PSS {run.memory.pss / 1024:.0f} / USS {run.memory.uss / 1024:.0f} MB; above an "
          f"idle node, per camera: {above.per(run.cameras)}; node process RSS "
          f"{node_mem[0] / 1024:.0f} MB")
    print(f"    judged from samples aged p50 {sa['p50']:.2f} / p99 {sa['p99']:.2f} / max "
          f"{sa['max']:.2f} s ({sa['n']} judgements); last packet p99 {pa['p99']:.2f} / max "
          f"{pa['max']:.2f} s")
    print(f"    judging tick p50 {judged['tick_ms']['p50']:.1f} / max "
          f"{judged['tick_ms']['max']:.1f} ms, longest gap between ticks "
          f"{judged['tick_gap_max']:.2f} s; event-loop lag p99 "
          f"{judged['loop_lag_ms']['p99']:.1f} / max {judged['loop_lag_ms']['max']:.1f} ms")
    if judged["not_ok_judgements"]:
        print(f"    judgements not ok in the window: {judged['not_ok_judgements']}")


async def _shared(node: NodeProcess, run: Run, urls: list[str], args: argparse.Namespace,
                  server: Any, workdir: Path) -> None:
    """N ffmpeg clients on the same streams while vigie runs; the CPU times of both over the
    same window. Both then meet the same machine (the other load on it, the RTSP server
    serving 2N clients, the cores' clock): their ratio does not depend on when each was
    measured, as it did when one window followed the other."""
    print(f"    + {len(urls)} ffmpeg -skip_frame nokey clients on the same streams, "
          f"{args.ffmpeg_warmup:.0f} s of warm-up, window of {args.window:.0f} s")
    clients = await asyncio.to_thread(FfmpegClients, urls, workdir)
    try:
        await asyncio.sleep(args.ffmpeg_warmup)
        vigie, ffmpeg = CpuWindow(node.pids()), CpuWindow(clients.pids())
        server_cpu0 = server.status()["cpu_seconds"]
        await asyncio.sleep(args.window)
        run.vigie_shared, elapsed, run.busy_shared = vigie.stop()
        run.ffmpeg_shared = ffmpeg.stop()[0]
        server_cores = (server.status()["cpu_seconds"] - server_cpu0) / elapsed
        run.ffmpeg_dead = clients.dead()
        mem = memory_of(clients.pids())
    finally:
        await asyncio.to_thread(clients.stop)
    n = run.cameras
    print(f"    vigie CPU {run.vigie_shared * 100:6.1f} % of a core = "
          f"{run.vigie_shared / n * 100:.3f} % per camera; ffmpeg CPU "
          f"{run.ffmpeg_shared * 100:6.1f} % = {run.ffmpeg_shared / n * 100:.3f} % per stream; "
          f"vigie/ffmpeg {run.ratio:.2f}; RTSP server {server_cores * 100:.1f} %; machine busy "
          f"{run.busy_shared * 100:.0f} %; load average {loadavg()}; ffmpeg RSS "
          f"{mem[0] / 1024 / n:.1f} / PSS {mem[1] / 1024 / n:.1f} MB per process; "
          f"{run.ffmpeg_dead} ffmpeg died")


async def _api_ages(http: Any, run: Run, polls: int = 10) -> None:
    ages: list[float] = []
    analysed: list[float] = []
    for _ in range(polls):
        items = await cameras(http)
        now = time.time()
        ok = [x for x in items if x["state"] == "ok"]
        ages.extend(a for x in ok if (a := iso_age(now, x["last_frame_at"])) is not None)
        analysed.extend(a for x in ok
                        if (a := iso_age(now, x.get("last_analysed_at"))) is not None)
        await asyncio.sleep(1)
    q, qa = quantiles(ages), quantiles(analysed)
    run.extra["api_last_frame_age"] = q
    print(f"    API last_frame_at age p99 {q['p99']:.2f} / max {q['max']:.2f} s "
          f"({q['n']} readings); last_analysed_at age p50 {qa['p50']:.2f} / p99 "
          f"{qa['p99']:.2f} / max {qa['max']:.2f} s (analyse_every 2 s)")


async def _offline(http: Any, server: Any, mounts: list[str], run: Run) -> None:
    """Stop a few mounts; time until the API shows their cameras offline, then ok again."""
    stopped = {f"cam-{i:03d}": mounts[i] for i in
               range(len(mounts) - 1, max(-1, len(mounts) - 1 - OFFLINE_STOPPED), -1)}
    t0 = time.monotonic()
    for mount in stopped.values():
        server.fault(mount, "stop")
    seen: dict[str, float] = {}
    while len(seen) < len(stopped) and time.monotonic() - t0 < 30:
        async with http.get("/api/v1/cameras?status=offline") as r:
            offline = {x["id"] for x in (await r.json())["items"]}
        now = time.monotonic() - t0
        for cam in stopped:
            if cam in offline and cam not in seen:
                seen[cam] = now
        await asyncio.sleep(0.1)
    delays = sorted(seen.values())
    for mount in stopped.values():
        server.fault(mount, "start")
    back, took, _ = await wait_states(
        http, lambda xs: all(x["state"] == "ok" for x in xs if x["id"] in stopped), 60)
    others = await cameras(http)
    collateral = [x["id"] for x in others if x["id"] not in stopped and x["state"] != "ok"]
    run.extra.update(offline_delays=delays, offline_missed=len(stopped) - len(seen),
                     back_ok_after=took if back else None, collateral=collateral)
    print(f"    offline detection ({len(stopped)} mounts stopped, offline_after "
          f"{OFFLINE_AFTER:.0f} s): "
          + ", ".join(f"{d:.1f}" for d in delays) + " s"
          + (f"; {len(stopped) - len(seen)} never seen offline" if len(seen) < len(stopped)
             else "")
          + f"; ok again {took:.1f} s after restart" + ("" if back else " (NOT)")
          + (f"; other cameras not ok: {collateral[:5]}" if collateral else ""))


async def idle_node(workdir: Path) -> Memory:
    """Memory of a node that watches no camera."""
    from tests.pg import temporary_database

    async with temporary_database("vigie_bench") as dsn:
        raw = node_config(dsn, [], None, Path(tempfile.mkdtemp(prefix="idle-", dir=workdir)))
        node = NodeProcess(raw, workdir)
        try:
            await asyncio.sleep(3)
            memory = await _sample_memory(node.pids, 3)
        finally:
            node.stop()
    return memory


def summary(runs: list[Run], alive: bool, code: int | None) -> None:
    print("\nsummary (CPU: utime + stime over the window, in % of one core; memory in MB)")
    print(f"{'cameras':>7} {'workers':>7} {'vigie alone':>11} {'vigie':>7} {'ffmpeg':>7} "
          f"{'×ffmpeg':>7} {'per added camera RSS/PSS/USS':>29} {'age p99':>7} {'max':>5} "
          f"{'offline':>7} {'busy':>9} {'load average':>15}")
    for r in runs:
        rows = [r, *([r.extra["soak"]] if "soak" in r.extra else [])]
        for row in rows:
            n = row.cameras
            slope = row.slope
            memory = (f"{slope.rss / 1024:.2f} / {slope.pss / 1024:.2f} / "
                      f"{slope.uss / 1024:.2f} ({row.base_cameras}→{n})") if slope else "-"
            judged = row.extra.get("judged")
            age = f"{judged['sample_age']['p99']:.2f}" if judged else "-"
            age_max = f"{judged['sample_age']['max']:.2f}" if judged else "-"
            delays = row.extra.get("offline_delays")
            offline = f"{max(delays):.1f}" if delays else "-"
            shared = row.ffmpeg_shared > 0
            print(f"{n:>7} {row.workers:>7} {row.vigie_alone / n * 100:>10.3f}% "
                  + (f"{row.vigie_shared / n * 100:>6.3f}% {row.ffmpeg_shared / n * 100:>6.3f}% "
                     f"{row.ratio:>7.2f} " if shared else f"{'-':>7} {'-':>7} {'-':>7} ")
                  + f"{memory:>29} {age:>7} {age_max:>5} {offline:>7} "
                  f"{row.busy_alone * 100:>3.0f}%/"
                  + (f"{row.busy_shared * 100:>3.0f}% " if shared else "  - ")
                  + f"{row.load:>15}")
    print("  vigie alone: node + workers, no ffmpeg running; vigie and ffmpeg: the same "
          "window, both running; busy: the machine's cores, alone / shared")
    print("  per added camera: (node at N − node at the base count) / (N − base); PSS is "
          "the figure to hold against the target (RSS counts the libraries once per worker, "
          "USS leaves them out)")
    print(f"targets: ≤ 1.2× ffmpeg at 200 cameras; ≤ 2 MB/camera; sample age ≤ 2 s at 300; "
          f"offline ≤ {OFFLINE_AFTER + 1:.0f} s")
    print(f"RTSP server alive and answering at the end: {alive}; exit code on stop: {code}")


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    from tests.cameras import clips
    from tests.cameras.harness import RtspServer

    counts = sorted(set(args.cameras))
    # Every connection starts the clip from its beginning: it must outlast the longest one
    # (a node's: warm-up, its window, the ffmpeg ramp, warm-up and window, the soak).
    longest = (args.warmup + 2 * args.window + max(counts) / RAMP_PER_SECOND
               + args.ffmpeg_warmup + args.soak + 240)
    clip = clips.clip("h264", seconds=max(clips.DEFAULT_SECONDS["h264"], int(longest)))
    runs: list[Run] = []
    server = RtspServer(log_path=workdir / "rtsp-server.log")
    server.start()
    try:
        mounts = [f"bench-{i:03d}" for i in range(max(counts))]
        urls = [server.add_clip(m, clip) for m in mounts]
        print(f"RTSP server pid {server.pid}, {len(mounts)} clip mounts of {clip.name}; "
              f"{os.cpu_count()} cores; load average {loadavg()}")
        idle = await idle_node(workdir)
        print(f"idle node (no camera): RSS {idle.rss / 1024:.0f} MB, PSS "
              f"{idle.pss / 1024:.0f} MB, USS {idle.uss / 1024:.0f} MB")
        for n in counts:
            for i, workers in enumerate(args.workers):
                who = "vigie's default" if workers is None else str(workers)
                base = args.base_cameras or max(1, n // 2)
                print(f"\n{n} cameras, camera workers: {who}")
                print(f"  node with {base} cameras (the base of the memory slope):")
                base_memory = await measure_base(server, urls[:base], workers, args, workdir)
                print(f"  node with {n} cameras:")
                soak = args.soak if n == counts[-1] and i == len(args.workers) - 1 else 0
                run = await measure_vigie(server, urls[:n], mounts[:n], workers, args, idle,
                                          workdir, soak)
                run.base_cameras, run.base_memory = base, base_memory
                if run.slope is not None:
                    print(f"  per added camera ({base} → {n}): {run.slope.per(1)}")
                runs.append(run)
        alive = server.alive()
    finally:
        code = server.stop()
    summary(runs, alive, code)
    return 0 if alive else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--cameras", "--streams", type=int, action="append",
                        help="camera (stream) count, repeat for several; default 100")
    parser.add_argument("--base-cameras", type=int, default=0,
                        help="cameras of the node the memory slope starts from (default N/2)")
    parser.add_argument("--workers", type=int, action="append",
                        help="camera worker processes, repeat for several; default: vigie's "
                             "own default for the camera count")
    parser.add_argument("--window", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--memory-window", type=float, default=10.0,
                        help="seconds of memory samples of the base node")
    parser.add_argument("--warmup", type=float, default=35.0,
                        help="seconds from the node's start to its window, at least")
    parser.add_argument("--ffmpeg-warmup", type=float, default=15.0)
    parser.add_argument("--no-ffmpeg", action="store_true",
                        help="vigie alone (memory, staleness, offline detection), no ratio")
    parser.add_argument("--soak", type=float, default=0.0,
                        help="keep the last vigie run this much longer, measure again")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    args.cameras = args.cameras or [100]
    args.workers = args.workers or [None]
    run_bench(bench, args, "bench-cameras-")


if __name__ == "__main__":
    main()
