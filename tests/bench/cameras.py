"""Camera watching at scale: vigie's CPU and memory per camera against `ffmpeg -skip_frame
nokey` on the same RTSP streams, with staleness and offline detection under that load.

    .venv/bin/python tests/bench/cameras.py --streams 200 [--streams 100 --streams 300]
                                            [--workers 2 --workers 4] [--window 30]
                                            [--warmup 35] [--soak 0]

The RTSP test server (tests/cameras/rtsp_server.py, GStreamer under the system python3)
serves N clip mounts, one media per client, no encoder: the cached test clip (640×360,
10 fps, a keyframe every 10 frames), long enough for the longest connection of the run.

Per stream count N, measured in the same run, one after the other on the same mounts:

ffmpeg   N `ffmpeg -skip_frame nokey -rtsp_transport tcp -i URL -f null -` processes,
         ramped up 25 a second; after the warm-up, their CPU (utime + stime from
         /proc/<pid>/stat, summed) over the window: the baseline.
vigie    per worker count: a node in a process of its own (`running_node`, no MQTT) with
         N cameras, all checks on with their defaults but `learn_for` (10 s, so the
         reference is learned and the blurred/moved checks run during the window). After
         every camera is `ok` and has learned its reference, over the window: the CPU of the
         node and its worker processes; their RSS and PSS minus an idle node's (a node with
         no camera, measured first); how old the sample each camera was judged from was
         (the node's judging loop is instrumented in the node process: sample age and packet
         age at every judgement, event-loop lag); then `last_frame_at` ages through the API;
         then offline detection: 5 mounts stopped, the time until the API shows each camera
         offline (contract: `offline_after` + 1 s), and the time until they are `ok` again
         once restarted.

Printed per run: the machine's busy share of its cores during the window (on 2 cores, the
RTSP server, vigie and ffmpeg compete: a busy machine makes every figure an upper bound),
the RTSP server's own CPU; at the end, a summary table with vigie/ffmpeg ratios (targets:
≤ 1.2× ffmpeg at 200 streams, ≤ 2 MB per camera, sample age ≤ 2 s, offline ≤ 6 s) and
whether the RTSP server is alive. `--soak S` keeps the last vigie run going S more seconds
and measures a second window: per-camera state that grows with time shows there.
The databases (one per node, on $VIGIE_TEST_PG or 127.0.0.1:5432) are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bench._common import (  # noqa: E402
    CpuWindow,
    descendants,
    memory_kb,
    quantiles,
)

RAMP_PER_SECOND = 25
OFFLINE_STOPPED = 5
LEARN_FOR = "10s"
OFFLINE_AFTER = 5.0  # the default, which the bench does not change
CAMERAS_PER_SITE = 10


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
class Run:
    """The figures of one measured run (vigie with a worker count, or ffmpeg)."""

    streams: int
    who: str
    cores: float = 0.0
    rss_mb: float = 0.0
    pss_mb: float = 0.0
    server_cores: float = 0.0
    machine_busy: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_per_stream(self) -> float:
        return self.cores / self.streams

    @property
    def others(self) -> float:
        """Cores used by neither the measured processes nor the RTSP server (this script,
        PostgreSQL, anything else on the machine): the noise on the figures."""
        return max(0.0, self.machine_busy * (os.cpu_count() or 1) - self.cores
                   - self.server_cores)


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


async def measure_vigie(server: Any, urls: list[str], mounts: list[str], workers: int,
                        args: argparse.Namespace, idle: tuple[int, int], workdir: Path,
                        soak: float) -> Run:
    import aiohttp

    from tests.pg import temporary_database

    n = len(urls)
    run = Run(n, f"vigie {workers}w")
    async with temporary_database("vigie_bench") as dsn:
        data_dir = Path(tempfile.mkdtemp(prefix="node-", dir=workdir))
        node = NodeProcess(node_config(dsn, urls, workers, data_dir), workdir)
        started = time.monotonic()
        try:
            headers = {"Authorization": f"Bearer {node.token}"}
            async with aiohttp.ClientSession(node.api, headers=headers) as http:
                ok, took, items = await wait_states(
                    http, lambda xs: all(x["state"] == "ok" for x in xs), timeout=120)
                late = Counter((x["state"], x["error"]) for x in items if x["state"] != "ok")
                print(f"    all {n} cameras ok: {ok} after {took:.1f} s"
                      + ("" if ok else f" (not ok: {late.most_common(3)})"))
                run.extra["all_ok_after"] = took if ok else None
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    if node.ask("refs")["refs"] >= n:
                        break
                    await asyncio.sleep(1)
                refs = node.ask("refs")["refs"]
                rest = args.warmup - (time.monotonic() - started)
                if rest > 0:
                    await asyncio.sleep(rest)
                print(f"    references learned: {refs}/{n}; window of {args.window:.0f} s")
                await _window(node, run, args.window, server, idle, dsn)
                await _api_ages(http, run)
                await _offline(http, server, mounts, run)
                if soak:
                    print(f"    soak: {soak:.0f} s more, then a second window")
                    await asyncio.sleep(soak)
                    again = Run(n, f"vigie {workers}w soak")
                    await _window(node, again, args.window, server, idle, dsn)
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


async def _window(node: NodeProcess, run: Run, window: float, server: Any,
                  idle: tuple[int, int], dsn: str) -> None:
    node.ask("stats")  # resets the judging probe
    pids = node.pids()
    cpu = CpuWindow(pids)
    pg = CpuWindow(await _pg_backends(dsn))
    server_cpu0 = server.status()["cpu_seconds"]
    await asyncio.sleep(window)
    run.cores, elapsed, run.machine_busy = cpu.stop()
    run.extra["pg_cores"] = pg.stop()[0]
    run.server_cores = (server.status()["cpu_seconds"] - server_cpu0) / elapsed
    judged = node.ask("stats")
    rss = pss = 0
    for pid in node.pids():
        r, p = memory_kb(pid)
        rss, pss = rss + r, pss + p
    node_rss, node_pss = memory_kb(node.pid)
    run.rss_mb, run.pss_mb = (rss - idle[0]) / 1024, (pss - idle[1]) / 1024
    run.extra.update(judged=judged, processes=len(pids), node_rss_mb=node_rss / 1024,
                     node_pss_mb=node_pss / 1024)
    sa, pa = judged["sample_age"], judged["packet_age"]
    print(f"    vigie CPU {run.cores * 100:6.1f} % of a core = "
          f"{run.cpu_per_stream * 100:.3f} % per camera ({len(pids)} processes); "
          f"RTSP server {run.server_cores * 100:.1f} %; PostgreSQL for the node "
          f"{run.extra['pg_cores'] * 100:.1f} %; machine busy {run.machine_busy * 100:.0f} % "
          f"({run.others * 100:.0f} % of a core by others, PostgreSQL included)")
    print(f"    memory above an idle node: RSS {run.rss_mb:.0f} MB "
          f"({run.rss_mb / run.streams:.2f} MB/camera), PSS {run.pss_mb:.0f} MB "
          f"({run.pss_mb / run.streams:.2f} MB/camera); node process RSS "
          f"{node_rss / 1024:.0f} MB")
    print(f"    judged from samples aged p50 {sa['p50']:.2f} / p99 {sa['p99']:.2f} / max "
          f"{sa['max']:.2f} s ({sa['n']} judgements); last packet p99 {pa['p99']:.2f} / max "
          f"{pa['max']:.2f} s")
    print(f"    judging tick p50 {judged['tick_ms']['p50']:.1f} / max "
          f"{judged['tick_ms']['max']:.1f} ms, longest gap between ticks "
          f"{judged['tick_gap_max']:.2f} s; event-loop lag p99 "
          f"{judged['loop_lag_ms']['p99']:.1f} / max {judged['loop_lag_ms']['max']:.1f} ms")
    if judged["not_ok_judgements"]:
        print(f"    judgements not ok in the window: {judged['not_ok_judgements']}")


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


def measure_ffmpeg(server: Any, urls: list[str], args: argparse.Namespace,
                   workdir: Path) -> Run:
    run = Run(len(urls), "ffmpeg")
    with ExitStack() as stack:
        procs: list[subprocess.Popen[bytes]] = []
        log = stack.enter_context(open(workdir / "ffmpeg.log", "ab"))
        for url in urls:
            procs.append(subprocess.Popen(
                ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
                 "-skip_frame", "nokey", "-rtsp_transport", "tcp", "-i", url, "-f", "null",
                 "-"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
            time.sleep(1 / RAMP_PER_SECOND)
        try:
            time.sleep(args.ffmpeg_warmup)
            pids = [p.pid for p in procs]
            cpu = CpuWindow(pids)
            server_cpu0 = server.status()["cpu_seconds"]
            time.sleep(args.window)
            run.cores, elapsed, run.machine_busy = cpu.stop()
            run.server_cores = (server.status()["cpu_seconds"] - server_cpu0) / elapsed
            mem = [memory_kb(p) for p in pids]
            run.rss_mb = sum(r for r, _ in mem) / 1024
            run.pss_mb = sum(p for _, p in mem) / 1024
            dead = sum(p.poll() is not None for p in procs)
            run.extra["dead"] = dead
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    print(f"    ffmpeg CPU {run.cores * 100:6.1f} % of a core = "
          f"{run.cpu_per_stream * 100:.3f} % per stream; RTSP server "
          f"{run.server_cores * 100:.1f} %; machine busy {run.machine_busy * 100:.0f} % "
          f"({run.others * 100:.0f} % of a core by others); "
          f"RSS {run.rss_mb / run.streams:.1f} MB / PSS {run.pss_mb / run.streams:.1f} MB "
          f"per process; {dead} died")
    return run


async def idle_node(workdir: Path) -> tuple[int, int]:
    """RSS and PSS (kB) of a node that watches no camera: the baseline."""
    from tests.pg import temporary_database

    async with temporary_database("vigie_bench") as dsn:
        raw = node_config(dsn, [], None, Path(tempfile.mkdtemp(prefix="idle-", dir=workdir)))
        node = NodeProcess(raw, workdir)
        try:
            await asyncio.sleep(3)
            rss = pss = 0
            for pid in node.pids():
                r, p = memory_kb(pid)
                rss, pss = rss + r, pss + p
        finally:
            node.stop()
    return rss, pss


def summary(runs: list[Run], alive: bool, code: int | None) -> None:
    print("\nsummary (CPU in % of one core; memory above an idle node)")
    print(f"{'streams':>7} {'who':<16} {'CPU/stream':>10} {'×ffmpeg':>8} {'MB/cam RSS':>10} "
          f"{'PSS':>6} {'age p99':>8} {'max':>6} {'offline s (max)':>15} {'busy':>5} "
          f"{'server':>7}")
    base = {r.streams: r for r in runs if r.who == "ffmpeg"}
    for r in runs:
        rows = [r, *([r.extra["soak"]] if "soak" in r.extra else [])]
        for row in rows:
            ref = base.get(row.streams)
            ratio = f"{row.cpu_per_stream / ref.cpu_per_stream:.2f}" if ref and ref.cores \
                and row.who != "ffmpeg" else "-"
            judged = row.extra.get("judged")
            age = f"{judged['sample_age']['p99']:.2f}" if judged else "-"
            age_max = f"{judged['sample_age']['max']:.2f}" if judged else "-"
            delays = row.extra.get("offline_delays")
            offline = f"{max(delays):.1f}" if delays else "-"
            mem = (row.rss_mb / row.streams, row.pss_mb / row.streams)
            print(f"{row.streams:>7} {row.who:<16} {row.cpu_per_stream * 100:>9.3f}% "
                  f"{ratio:>8} {mem[0]:>10.2f} {mem[1]:>6.2f} {age:>8} {age_max:>6} "
                  f"{offline:>15} {row.machine_busy * 100:>4.0f}% "
                  f"{row.server_cores * 100:>6.1f}%")
    by_who: dict[str, list[Run]] = {}
    for r in runs:
        if r.who != "ffmpeg":
            by_who.setdefault(r.who, []).append(r)
    for who, rs in by_who.items():
        if len(rs) >= 2:
            first, last = min(rs, key=lambda r: r.streams), max(rs, key=lambda r: r.streams)
            slope = (last.rss_mb - first.rss_mb) / (last.streams - first.streams)
            pss = (last.pss_mb - first.pss_mb) / (last.streams - first.streams)
            print(f"{who}: memory per added camera ({first.streams} → {last.streams}): "
                  f"RSS {slope:.2f} MB, PSS {pss:.2f} MB")
    print(f"targets: ≤ 1.2× ffmpeg at 200 streams; ≤ 2 MB/camera; sample age ≤ 2 s; "
          f"offline ≤ {OFFLINE_AFTER + 1:.0f} s")
    print(f"RTSP server alive and answering at the end: {alive}; exit code on stop: {code}")


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    from tests.cameras import clips
    from tests.cameras.harness import RtspServer

    counts = sorted(set(args.streams))
    # Every connection starts the clip from its beginning: it must outlast the longest one.
    longest = args.warmup + 2 * args.window + args.soak + 240
    clip = clips.clip("h264", seconds=max(clips.DEFAULT_SECONDS["h264"], int(longest)))
    runs: list[Run] = []
    server = RtspServer(log_path=workdir / "rtsp-server.log")
    server.start()
    try:
        mounts = [f"bench-{i:03d}" for i in range(max(counts))]
        urls = [server.add_clip(m, clip) for m in mounts]
        print(f"RTSP server pid {server.pid}, {len(mounts)} clip mounts of {clip.name}; "
              f"{os.cpu_count()} cores")
        idle = await idle_node(workdir)
        print(f"idle node (no camera): RSS {idle[0] / 1024:.0f} MB, PSS {idle[1] / 1024:.0f} MB")
        for n in counts:
            print(f"\n{n} streams")
            print("  ffmpeg -skip_frame nokey:")
            runs.append(await asyncio.to_thread(measure_ffmpeg, server, urls[:n], args,
                                                workdir))
            for i, workers in enumerate(args.workers):
                print(f"  vigie, {workers} camera workers:")
                soak = args.soak if n == counts[-1] and i == len(args.workers) - 1 else 0
                runs.append(await measure_vigie(server, urls[:n], mounts[:n], workers, args,
                                                idle, workdir, soak))
        alive = server.alive()
    finally:
        code = server.stop()
    summary(runs, alive, code)
    return 0 if alive else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, action="append",
                        help="stream count (repeat for several; default 200)")
    parser.add_argument("--workers", type=int, action="append",
                        help="camera worker processes (repeat for several; default 2 and 4)")
    parser.add_argument("--window", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=35.0,
                        help="seconds from the node's start to its window, at least")
    parser.add_argument("--ffmpeg-warmup", type=float, default=15.0)
    parser.add_argument("--soak", type=float, default=0.0,
                        help="keep the last vigie run this much longer, measure again")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    args.streams = args.streams or [200]
    args.workers = args.workers or [2, 4]
    workdir = Path(tempfile.mkdtemp(prefix="bench-cameras-"))
    try:
        code = asyncio.run(bench(args, workdir))
    finally:
        if args.keep:
            print(f"logs in {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
