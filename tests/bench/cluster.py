"""Several nodes on one machine: cameras and events per node with 1, 2 and 3 nodes, what the
coordination costs each node, and how long a SIGKILLed node's cameras go unwatched.

    .venv/bin/python tests/bench/cluster.py [--cameras 60] [--kills 10] [--events 20000]
                                            [--lease 5] [--interval 1] [--window 30]

Everything is real and local: a Mosquitto of our own on a free port, the RTSP test server
(tests/cameras/rtsp_server.py) serving `--cameras` clip mounts, `vigie run` processes (each
in a process group of its own, with its camera worker), one fresh PostgreSQL database per
phase on $VIGIE_TEST_PG or 127.0.0.1:5432 (dropped at the end).

Phases, one after the other on the same cameras:

lone     one node with `cluster.enabled: false`: the baseline of every ratio.
1, 2, 3  that many nodes with `cluster.enabled: true`, started together.

In each phase, once every camera is held and the nodes are balanced:

- cameras per node (their leases) and the CPU of each node's process tree over `--window`
  quiet seconds (no sensor traffic): cores per node, and per camera;
- coordination, counted by the nodes: `vigie_cluster_queries_total` from each node's
  /metrics over the window, by part — `leases`, every statement on the lease protocol's
  own connection (census, handovers, renewals, heartbeat, NOTIFY; BEGIN and COMMIT count),
  and `camera_status`, the views and pictures published for the other nodes' API;
- coordination, seen by the database: committed transactions per second over that window
  (`pg_stat_database.xact_commit` of the phase's own database: every statement vigie sends
  outside an explicit transaction is one). The phase's figure minus the lone node's is
  what running that many clustered nodes adds, since the cameras' own writes (history,
  samples) are the same in every phase: the lease protocol (census, handovers, renewals,
  heartbeat, every `interval`), the election sessions, the camera views published for the
  other nodes' API (`camera_status`), and every further node's own background statements
  (database ping, alert refresh) that a lone node runs once. Divided by the node count:
  the per-node overhead. (pg_stat_statements would name the statements, but needs a
  server restart to load: not on a shared server.)
- events/s: `--events` QoS 1 events published at full speed by one paho process, over
  native topics spread over every site; the rate is N over the time from the first
  publish to the moment every row is in `events` (shared subscriptions spread the
  messages over the nodes).

Failover (3 nodes): `--kills` times, SIGKILL one node's process group (the node and its
camera worker, as the kernel's OOM killer would); the time from the kill until every camera
its leases held is leased by a live node again (polled in `camera_leases` every 50 ms; a
node starts judging a camera the moment its claim commits). The victim is then restarted
under its name (as a StatefulSet would) and the cluster rebalanced before the next kill.
Printed: min / median / p90 / max against the design's bound, lease + one interval.

The machine has 2 cores shared by every process here, and by whoever else runs: expect no
gain in absolute terms from more nodes; the figures are upper bounds of the costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bench._common import (  # noqa: E402
    cpu_seconds,
    descendants,
    free_port,
    machine_busy,
    run_bench,
    start_broker,
)
from tests.pg import create_database, drop_database  # noqa: E402

CAMERAS_PER_SITE = 3
SENSORS_PER_SITE = 10


# --- processes ---------------------------------------------------------------------------------

@dataclass
class NodeProcess:
    name: str
    config: Path
    log: Path
    api: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:  # the child has its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vigie", "run", "--config", str(self.config)],
                stdout=log, stderr=log, start_new_session=True, cwd=ROOT)

    def kill(self) -> None:
        """SIGKILL the node and its camera workers (its process group)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def died(self) -> str | None:
        """The end of its log if the process exited (a bad config, a crash)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"{self.name} exited ({self.proc.returncode}): " + " | ".join(
            self.log.read_text(errors="replace").splitlines()[-5:])

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *descendants(self.proc.pid)]


# --- configuration -----------------------------------------------------------------------------

def sites(urls: list[str]) -> list[dict[str, Any]]:
    out = []
    for s in range((len(urls) + CAMERAS_PER_SITE - 1) // CAMERAS_PER_SITE):
        cams = urls[s * CAMERAS_PER_SITE:(s + 1) * CAMERAS_PER_SITE]
        out.append({"id": f"clg-{s:03d}", "name": f"Collège {s}", "uai": f"{780000 + s:07d}A",
                    "cameras": [{"id": f"cam-{i}", "name": f"cam {i}", "zone": "cour",
                                 "url": url} for i, url in enumerate(cams)],
                    "sensors": [{"id": f"s{i:02d}", "kind": "door", "zone": "cour"}
                                for i in range(SENSORS_PER_SITE)]})
    return out


def write_config(path: Path, name: str, dsn: str, mqtt_port: int, prefix: str,
                 site_list: list[dict[str, Any]], clustered: bool, args: argparse.Namespace
                 ) -> str:
    """Write a node's configuration; its API's URL."""
    port = free_port()
    raw = {
        "node": {"name": name, "data_dir": str(path.parent / name), "camera_workers": 1},
        "database": {"dsn": dsn, "pool_size": 4},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "topic_prefix": prefix,
                 "client_id": f"vigie-{prefix}-{name}"},
        "api": {"listen": f"127.0.0.1:{port}"},
        "logging": {"level": "warning"},
        "cluster": {"enabled": clustered, "lease_seconds": args.lease,
                    "interval": args.interval},
        "sites": site_list,
    }
    path.write_text(yaml.safe_dump(raw))
    return f"http://127.0.0.1:{port}"


def coordination_queries(node: NodeProcess) -> dict[str, float]:
    """vigie_cluster_queries_total of a node, by part (what it counts: vigie/metrics.py)."""
    import urllib.request

    with urllib.request.urlopen(f"{node.api}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("vigie_cluster_queries_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('part="')[1].split('"')[0]] = float(value)
    return out


# --- the database's view -----------------------------------------------------------------------

async def holders(conn: Any) -> dict[str, str | None]:
    """camera: the node whose lease on it is live (None: free)."""
    rows = await conn.fetch("SELECT camera, CASE WHEN expires_at > now() THEN node END AS node "
                            "FROM camera_leases")
    return {r["camera"]: r["node"] for r in rows}


async def watched_by_lone(conn: Any) -> int:
    return int(await conn.fetchval(
        "SELECT coalesce(max(cameras), 0) FROM nodes WHERE state = 'up'") or 0)


async def xact(conn: Any) -> int:
    return int(await conn.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database "
        "WHERE datname = current_database()"))


async def wait_until(check: Any, timeout: float, what: str,
                     nodes: list[NodeProcess] = ()) -> float:  # type: ignore[assignment]
    started = time.monotonic()
    while True:
        dead = [d for n in nodes if (d := n.died())]
        if dead:
            raise RuntimeError(f"{what}: {dead[0]}")
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.1)


# --- sensor traffic ----------------------------------------------------------------------------

def publish_all(port: int, topics: list[str], n: int, started: Any) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started.value = time.time()
    infos = []
    for i in range(n):
        body = {"id": f"e{i}", "kind": "door", "state": "open" if i % 2 else "closed"}
        infos.append(client.publish(topics[i % len(topics)], json.dumps(body).encode(), qos=1))
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


async def events_per_second(conn: Any, port: int, topics: list[str], n: int) -> float:
    before = int(await conn.fetchval("SELECT count(*) FROM events"))
    started = mp.Value("d", 0.0)
    pub = mp.Process(target=publish_all, args=(port, topics, n, started))
    pub.start()
    deadline = time.monotonic() + 120
    while True:
        stored = int(await conn.fetchval("SELECT count(*) FROM events")) - before
        if stored >= n:
            done = time.time()
            break
        if time.monotonic() > deadline:
            pub.kill()
            raise RuntimeError(f"events: {stored} of {n} stored after 120 s")
        await asyncio.sleep(0.05)
    pub.join(30)
    return n / (done - started.value)


# --- one phase ---------------------------------------------------------------------------------

@dataclass
class Phase:
    label: str
    nodes: int
    cameras: dict[str, int] = field(default_factory=dict)  # node: cameras held
    cores: dict[str, float] = field(default_factory=dict)  # node: cores over the window
    machine_busy: float = 0.0
    xacts_per_s: float = 0.0
    queries: dict[str, dict[str, float]] = field(default_factory=dict)  # node: part: per s
    events_per_s: float = 0.0
    failovers: list[float] = field(default_factory=list)

    @property
    def total_cores(self) -> float:
        return sum(self.cores.values())


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, mqtt_port: int,
                 urls: list[str]) -> None:
        self.args, self.workdir, self.mqtt_port = args, workdir, mqtt_port
        self.sites = sites(urls)
        self.keys = {f"{s['id']}/{c['id']}" for s in self.sites for c in s["cameras"]}
        self.running: list[NodeProcess] = []
        self.databases: list[str] = []

    def topics(self, prefix: str) -> list[str]:
        return [f"{prefix}/{s['id']}/{sensor['id']}/event" for s in self.sites
                for sensor in s["sensors"]]

    async def phase(self, count: int, clustered: bool) -> Phase:
        label = f"{count} node(s)" if clustered else "lone node (cluster off)"
        print(f"\n== {label}", flush=True)
        result = Phase(label, count)
        dsn = await create_database("bench_cluster")
        self.databases.append(dsn)
        prefix = f"b{uuid.uuid4().hex[:6]}"
        nodes = []
        for i in range(count):
            name = f"vigie-{i}"
            path = self.workdir / f"{prefix}-{name}.yaml"
            api = write_config(path, name, dsn, self.mqtt_port, prefix, self.sites,
                               clustered, self.args)
            nodes.append(NodeProcess(name, path, self.workdir / f"{prefix}-{name}.log", api))
        for node in nodes:
            node.start()
            self.running.append(node)
        conn = await self._connect(dsn, nodes)
        try:
            if clustered:
                took = await wait_until(lambda: self._balanced(conn, count), 120, "balance",
                                        nodes)
            else:
                took = await wait_until(
                    lambda: self._lone_watching(conn), 120, "lone node watching", nodes)
            print(f"  every camera held, nodes balanced {took:.1f}s after the start",
                  flush=True)
            await asyncio.sleep(self.args.settle)
            await self._window(conn, nodes, result, clustered)
            result.events_per_s = await events_per_second(
                conn, self.mqtt_port, self.topics(prefix), self.args.events)
            print(f"  {self.args.events} events stored at {result.events_per_s:,.0f}/s",
                  flush=True)
            if clustered and count == max(self.args.nodes) and count >= 2 and self.args.kills:
                result.failovers = await self._kills(conn, nodes, count)
        finally:
            for node in nodes:
                node.terminate()
                self.running.remove(node)
            await conn.close()
        return result

    async def _connect(self, dsn: str, nodes: list[NodeProcess]) -> Any:
        # The nodes migrate the database: wait for the tables.
        deadline = time.monotonic() + 60
        conn = await asyncpg.connect(dsn)
        while True:
            if await conn.fetchval("SELECT to_regclass('camera_leases') IS NOT NULL "
                                   "AND to_regclass('events') IS NOT NULL"):
                return conn
            dead = [d for n in nodes if (d := n.died())]
            if time.monotonic() > deadline or dead:
                raise RuntimeError(f"the nodes did not migrate the database {dead}")
            await asyncio.sleep(0.2)

    async def _balanced(self, conn: Any, count: int) -> bool:
        held = await holders(conn)
        if set(held) != self.keys or None in held.values():
            return False
        per: dict[str, int] = {}
        for node in held.values():
            assert node is not None
            per[node] = per.get(node, 0) + 1
        fair = len(self.keys) / count
        return len(per) == count and all(abs(n - fair) <= 1 for n in per.values())

    async def _lone_watching(self, conn: Any) -> bool:
        return await watched_by_lone(conn) == len(self.keys)

    async def _window(self, conn: Any, nodes: list[NodeProcess], result: Phase,
                      clustered: bool) -> None:
        pids = {n.name: n.pids() for n in nodes}
        cpu0 = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
        busy0, total0 = machine_busy()
        q0 = ({n.name: await asyncio.to_thread(coordination_queries, n) for n in nodes}
              if clustered else {})
        x0, t0 = await xact(conn), time.monotonic()
        await asyncio.sleep(self.args.window)
        x1, t1 = await xact(conn), time.monotonic()
        for node in nodes if clustered else []:
            q1 = await asyncio.to_thread(coordination_queries, node)
            result.queries[node.name] = {part: (q1[part] - q0[node.name].get(part, 0.0)) /
                                         (t1 - t0) for part in q1}
        busy1, total1 = machine_busy()
        for name, ps in pids.items():
            result.cores[name] = (sum(cpu_seconds(p) for p in ps) - cpu0[name]) / (t1 - t0)
        result.machine_busy = (busy1 - busy0) / max(total1 - total0, 1)
        result.xacts_per_s = (x1 - x0 - 2) / (t1 - t0)  # minus our own two reads
        if clustered:
            held = await holders(conn)
            for node in nodes:
                result.cameras[node.name] = sum(1 for h in held.values() if h == node.name)
        else:
            result.cameras[nodes[0].name] = await watched_by_lone(conn)
        for node in nodes:
            cams = result.cameras[node.name]
            queries = ", ".join(f"{part} {rate:.1f}/s" for part, rate in
                                sorted(result.queries.get(node.name, {}).items()))
            print(f"  {node.name}: {cams} cameras, {result.cores[node.name]:.3f} cores "
                  f"({1000 * result.cores[node.name] / max(cams, 1):.1f} millicores/camera)"
                  + (f"; coordination statements: {queries}" if queries else ""))
        print(f"  transactions/s in the database: {result.xacts_per_s:.1f}; machine busy "
              f"{100 * result.machine_busy:.0f}% of {os.cpu_count()} cores", flush=True)

    async def _kills(self, conn: Any, nodes: list[NodeProcess], count: int) -> list[float]:
        bound = self.args.lease + self.args.interval
        took: list[float] = []
        for k in range(self.args.kills):
            victim = nodes[k % len(nodes)]
            held = await holders(conn)
            orphans = {c for c, n in held.items() if n == victim.name}
            killed = time.monotonic()
            victim.kill()
            while True:
                held = await holders(conn)
                if all(held.get(c) not in (None, victim.name) for c in orphans):
                    break
                if time.monotonic() - killed > 10 * bound:
                    raise RuntimeError(f"kill {k + 1}: cameras not taken over in "
                                       f"{10 * bound:.0f}s")
                await asyncio.sleep(0.05)
            took.append(time.monotonic() - killed)
            print(f"  kill {k + 1}/{self.args.kills} ({victim.name}, {len(orphans)} cameras): "
                  f"watched again after {took[-1]:.2f}s (bound {bound:.1f}s)", flush=True)
            victim.start()  # the StatefulSet brings it back under its name
            await wait_until(lambda: self._balanced(conn, count), 180, "rebalance", nodes)
        return took


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(phases: list[Phase], args: argparse.Namespace, rtsp: tuple[bool, float]) -> None:
    lone = phases[0]
    one = next((p for p in phases if p.nodes == 1 and p is not lone), lone)
    print("\n== summary (2 shared cores: upper bounds of every cost)")
    print(f"{'phase':<26}{'cameras/node':>14}{'cores/node':>12}{'cores total':>13}"
          f"{'xacts/s':>9}{'xacts/s/node over lone':>24}{'coord. stmts/s/node':>21}"
          f"{'events/s':>10}{'× 1 node':>10}{'machine busy':>14}")
    for p in phases:
        per_node = (p.xacts_per_s - lone.xacts_per_s) / p.nodes
        cams = "/".join(str(c) for c in p.cameras.values())
        stmts = (f"{sum(sum(q.values()) for q in p.queries.values()) / p.nodes:.1f}"
                 if p.queries else "-")
        print(f"{p.label:<26}{cams:>14}{p.total_cores / p.nodes:>12.3f}{p.total_cores:>13.3f}"
              f"{p.xacts_per_s:>9.1f}{per_node:>24.1f}{stmts:>21}{p.events_per_s:>10,.0f}"
              f"{p.events_per_s / one.events_per_s:>10.2f}{100 * p.machine_busy:>13.0f}%")
    print("ratios to the lone node: CPU total "
          + ", ".join(f"{p.nodes} node(s) {p.total_cores / lone.total_cores:.2f}×"
                      for p in phases[1:])
          + "; events/s " + ", ".join(f"{p.nodes} node(s) {p.events_per_s / lone.events_per_s:.2f}×"
                                      for p in phases[1:]))
    for p in phases:
        if p.failovers:
            f = p.failovers
            bound = args.lease + args.interval
            print(f"failover over {len(f)} SIGKILLs ({p.label}): min {min(f):.2f}s, median "
                  f"{statistics.median(f):.2f}s, p90 {_q(f, 0.9):.2f}s, max {max(f):.2f}s; "
                  f"bound lease {args.lease:g}s + interval {args.interval:g}s = {bound:g}s "
                  f"(max/bound {max(f) / bound:.2f}; {sum(t > bound for t in f)} over)")
    alive, cpu = rtsp
    print(f"RTSP server: {'alive' if alive else 'DEAD'} at the end, {cpu:.2f} cores on average")


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    from tests.cameras import clips
    from tests.cameras.harness import RtspServer

    broker, port = start_broker(workdir)
    server = RtspServer(log_path=workdir / "rtsp-server.log")
    server.start()
    rtsp_cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
    bench = None
    phases: list[Phase] = []
    try:
        clip = clips.clip("h264")
        urls = [server.add_clip(f"cluster-{i:03d}", clip) for i in range(args.cameras)]
        print(f"{args.cameras} clip cameras on the RTSP server (pid {server.pid}), Mosquitto "
              f"on port {port}, {os.cpu_count()} cores; lease {args.lease:g}s, interval "
              f"{args.interval:g}s", flush=True)
        bench = Bench(args, workdir, port, urls)
        phases.append(await bench.phase(1, clustered=False))
        for count in args.nodes:
            phases.append(await bench.phase(count, clustered=True))
        alive = server.alive()
        rtsp_cpu = (cpu_seconds(server.pid) - rtsp_cpu0) / (time.monotonic() - t0)
    finally:
        if bench is not None:
            for node in list(bench.running):
                node.kill()
            for dsn in bench.databases:
                await drop_database(dsn)
        server.stop()
        broker.terminate()
        broker.wait(10)
    summary(phases, args, (alive, rtsp_cpu))
    return 0 if alive else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=60)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs in the 3-node phase")
    parser.add_argument("--events", type=int, default=20_000, help="events per phase")
    parser.add_argument("--lease", type=float, default=5.0, help="cluster.lease_seconds")
    parser.add_argument("--interval", type=float, default=1.0, help="cluster.interval")
    parser.add_argument("--window", type=float, default=30.0, help="quiet seconds measured")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds after balance before the window")
    parser.add_argument("--nodes", type=int, action="append",
                        help="clustered node counts (repeat; default 1, 2 and 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    args.nodes = sorted(set(args.nodes or [1, 2, 3]))
    run_bench(bench, args, "bench-cluster-")


if __name__ == "__main__":
    main()
