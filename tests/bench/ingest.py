"""Ingest benchmark: vigie against a bare paho-mqtt subscriber on the same broker.

    .venv/bin/python tests/bench/ingest.py [--events 200000] [--sites 50] [--sensors 20]

Two measurements per subscriber, in the same run, on a Mosquitto of our own:

- live: a publisher process sends N events at full speed over QoS 1 while the subscriber
  runs; the rate is N over the time from the first publish to the last message handled
  (bare: received and acknowledged; vigie: committed to PostgreSQL).
- backlog: N events are queued at the broker for the subscriber's persistent session while
  it is away; it then connects and drains them. This isolates the consumer's own speed; the
  rate is N over the time from the first message received to the last one handled.

The broker uses `max_queued_messages 0` (no limit: Mosquitto's default of 1000 would drop
QoS 1 messages queued for a slow subscriber), `max_inflight_messages 0`, no persistence.
At the end, the count of rows must equal N: nothing lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench._common import (
    always_open,
    create_database,
    drop_database,
    free_port,
    ratio,
    start_broker,
    start_vigie,
    stop_vigie,
    wait_sql,
)


def payloads(n: int, sites: int, sensors: int, prefix: str) -> list[tuple[str, bytes]]:
    out = []
    base = time.time() - 3600
    for i in range(n):
        site, sensor = i % sites, (i // sites) % sensors
        kind = "intrusion" if sensor == 0 else "door"
        state = ("alarm" if i % 7 == 0 else "normal") if kind == "intrusion" else (
            "open" if i % 2 else "closed")
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + i / 1000)) + "Z"
        body = {"id": f"b{i}", "ts": ts, "kind": kind, "state": state}
        out.append((f"{prefix}/clg-{site:03d}/s{sensor:02d}/event", json.dumps(body).encode()))
    return out


def publish_all(port: int, messages: list[tuple[str, bytes]], ready: mp.Event | None,
                t0: mp.Value | None) -> None:  # type: ignore[valid-type]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    if ready is not None:
        ready.wait()
    if t0 is not None:
        t0.value = time.time()
    # Packet ids wrap at 65535: keep fewer than that outstanding.
    window = 30_000
    infos = []
    for i, (t, p) in enumerate(messages):
        if i >= window:
            infos[i - window].wait_for_publish(120)
        infos.append(client.publish(t, p, qos=1))
    for info in infos[-window:]:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def bare_subscriber(port: int, prefix: str, n: int, client_id: str, ready: mp.Event,
                    done: mp.Value, first: mp.Value | None = None,
                    connect_only: bool = False, cpu: mp.Value | None = None) -> None:
    """The baseline: paho, QoS 1, acknowledging each message as soon as it arrives."""
    received = 0
    cpu_at_first = 0.0
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5)
    finished = mp.Event()

    def on_connect(c, u, f, rc, p):
        c.subscribe(f"{prefix}/+/+/event", qos=1)

    def on_subscribe(c, u, mid, rc, p):
        ready.set()

    def on_message(c, u, msg):
        nonlocal received, cpu_at_first
        json.loads(msg.payload)  # the least a real consumer does
        received += 1
        if received == 1 and first is not None:
            first.value = time.time()
            cpu_at_first = time.process_time()
        if received == n:
            done.value = time.time()
            if cpu is not None:
                cpu.value = time.process_time() - cpu_at_first
            finished.set()

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 65535
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    if connect_only:
        ready.wait(10)
        client.disconnect()
        client.loop_stop()
        return
    finished.wait(600)
    client.disconnect()
    client.loop_stop()


def write_config(path: Path, dsn: str, port: int, prefix: str, sites: int, sensors: int,
                 client_id: str, api_port: int) -> None:
    lines = [
        "node: {name: bench, data_dir: " + str(path.parent / "var") + "}",
        f"database: {{dsn: \"{dsn}\"}}",
        f"mqtt: {{url: \"mqtt://127.0.0.1:{port}\", topic_prefix: {prefix}, "
        f"client_id: {client_id}}}",
        f"api: {{listen: \"127.0.0.1:{api_port}\"}}",
        "logging: {level: warning}",
        "sites:",
    ]
    for s in range(sites):
        lines.append(f"  - {{id: clg-{s:03d}, name: \"Collège {s}\", uai: \"078{s:04d}A\", "
                     f"opening_hours: {{{always_open()}}}, sensors: [")
        for k in range(sensors):
            kind = "intrusion" if k == 0 else "door"
            lines.append(f"      {{id: s{k:02d}, kind: {kind}}},")
        lines.append("    ]}")
    path.write_text("\n".join(lines) + "\n")


async def count_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def wait_rows(dsn: str, n: int, timeout: float) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await conn.fetchval("SELECT count(*) FROM events") >= n:
                return time.time()
            await asyncio.sleep(0.02)
        raise TimeoutError(f"only {await conn.fetchval('SELECT count(*) FROM events')} rows")
    finally:
        await conn.close()


def run_bare(port: int, messages: list[tuple[str, bytes]], prefix: str, backlog: bool
             ) -> tuple[float, float]:
    """(messages per second, CPU seconds per message: backlog mode only, else 0)."""
    ctx = mp.get_context("spawn")
    ready, done, t0 = ctx.Event(), ctx.Value("d", 0.0), ctx.Value("d", 0.0)
    first, cpu = ctx.Value("d", 0.0), ctx.Value("d", 0.0)
    cid = f"bench-bare-{uuid.uuid4().hex[:8]}"
    if backlog:
        p = ctx.Process(target=bare_subscriber, args=(port, prefix, len(messages), cid, ready,
                                                      done, None, True))
        p.start()
        p.join()
        publish_all(port, messages, None, None)
        ready = ctx.Event()
        sub = ctx.Process(target=bare_subscriber, args=(port, prefix, len(messages), cid, ready,
                                                        done, first, False, cpu))
        sub.start()
        sub.join(600)
        return len(messages) / (done.value - first.value), cpu.value / len(messages)
    sub = ctx.Process(target=bare_subscriber, args=(port, prefix, len(messages), cid, ready, done))
    sub.start()
    pub = ctx.Process(target=publish_all, args=(port, messages, ready, t0))
    pub.start()
    pub.join()
    sub.join(600)
    return len(messages) / (done.value - t0.value), 0.0


async def run_vigie(port: int, messages: list[tuple[str, bytes]], prefix: str, dsn: str,
                    workdir: Path, sites: int, sensors: int, backlog: bool
                    ) -> tuple[float, int, float]:
    """(messages per second, rows, CPU seconds of the node per message: backlog mode only)."""
    cid = f"bench-vigie-{uuid.uuid4().hex[:8]}"
    config = workdir / f"vigie-{cid}.yaml"
    api_port = free_port()
    write_config(config, dsn, port, prefix, sites, sensors, cid, api_port)
    # VIGIE_BENCH_PROFILE=/tmp/vigie.prof: py-spy samples the node (collapsed stacks).
    profile = os.environ.get("VIGIE_BENCH_PROFILE")
    spies: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = start_vigie(config)
        if profile:
            spies.append(subprocess.Popen(
                ["py-spy", "record", "--pid", str(proc.pid), "-r", "200", "--threads",
                 "-f", "raw", "-o", profile], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        return proc

    # Wait until the node's MQTT session exists (the sites are synced at start).
    proc = start()
    await wait_sql(dsn, f"SELECT count(*) = {sites} FROM sites WHERE active")
    await asyncio.sleep(1.0)  # connect + subscribe
    ctx = mp.get_context("spawn")
    if backlog:
        await stop_vigie(proc)
        publish_all(port, messages, None, None)
        proc = start()
        # The node's CPU from its first stored row (its start-up, imports and migrations
        # checked, is not ingest) to the last.
        cpu_from, pg_from = await first_row_cpu(dsn, psutil.Process(proc.pid))
    else:
        ready, t0 = ctx.Event(), ctx.Value("d", 0.0)
        ready.set()
        pub = ctx.Process(target=publish_all, args=(port, messages, ready, t0))
        pub.start()
    before = 0
    finished = await wait_rows(dsn, before + len(messages), timeout=900)
    cpu = pg_cpu = 0.0
    if backlog:
        times = psutil.Process(proc.pid).cpu_times()
        cpu = (times.user + times.system - cpu_from) / len(messages)
        pg_cpu = (await backends_cpu(dsn) - pg_from) / len(messages)
        conn = await asyncpg.connect(dsn)
        started = float(await conn.fetchval("SELECT extract(epoch FROM min(received_at)) "
                                            "FROM events"))
        await conn.close()
    else:
        pub.join()
        started = t0.value
    await asyncio.sleep(1.0)  # anything beyond N would be a duplicate
    rows = await count_rows(dsn)
    print_write_figures(await scrape(api_port))
    await stop_vigie(proc)
    for spy in spies:
        spy.wait(30)
    return len(messages) / (finished - started), rows, cpu, pg_cpu


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


def print_write_figures(metrics: str) -> None:
    """What the node's writer did: transactions, their mean size and time."""
    values = {}
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name in ("vigie_db_write_seconds_sum", "vigie_db_write_seconds_count",
                    "vigie_db_write_batch_size_sum"):
            values[name] = float(value)
    n = values.get("vigie_db_write_seconds_count", 0)
    if n:
        print(f"    node: {n:.0f} write transactions, mean "
              f"{values.get('vigie_db_write_batch_size_sum', 0) / n:.0f} messages, mean "
              f"{values['vigie_db_write_seconds_sum'] / n * 1000:.1f} ms each "
              f"(this node's last start only)")


async def first_row_cpu(dsn: str, proc: psutil.Process) -> tuple[float, float]:
    """The node's CPU seconds so far, and its PostgreSQL backends', read as its first
    event row appears."""
    conn = await asyncpg.connect(dsn)
    try:
        while not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM events)"):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        times = proc.cpu_times()
        return float(times.user + times.system), await backends_cpu(dsn, conn)
    finally:
        await conn.close()


_BACKENDS: dict[int, float] = {}  # pid: CPU seconds last read (a backend may end meanwhile)


async def backends_cpu(dsn: str, conn: asyncpg.Connection | None = None) -> float:
    """CPU seconds used so far by the PostgreSQL backends serving the node's database (the
    server runs on this machine): its share of the ingest work."""
    own = conn or await asyncpg.connect(dsn)
    try:
        pids = [r[0] for r in await own.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")]
    finally:
        if conn is None:
            await own.close()
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        _BACKENDS[pid] = t.user + t.system
    return sum(_BACKENDS.values())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--sensors", type=int, default=20)
    parser.add_argument("--mode", choices=["live", "backlog", "both"], default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker, port = start_broker(workdir)
        try:
            modes = ["live", "backlog"] if args.mode == "both" else [args.mode]
            for mode in modes:
                backlog = mode == "backlog"
                prefix = f"b{uuid.uuid4().hex[:6]}"
                messages = payloads(args.events, args.sites, args.sensors, prefix)
                bare, bare_cpu = run_bare(port, messages, prefix, backlog)
                dsn = await create_database("vigie_bench")
                try:
                    prefix2 = f"v{uuid.uuid4().hex[:6]}"
                    messages = payloads(args.events, args.sites, args.sensors, prefix2)
                    rate, rows, cpu, pg_cpu = await run_vigie(port, messages, prefix2, dsn, workdir,
                                                 args.sites, args.sensors, backlog)
                finally:
                    await drop_database(dsn)
                verdict = "OK" if rows == args.events else "LOST/DUP"
                print(f"[{mode}] N={args.events}: bare paho subscriber {bare:,.0f} msg/s; "
                      f"vigie publish→durable row {rate:,.0f} msg/s; ratio {ratio(rate, bare):.2f} "
                      f"(target ≥ 0.6); rows {rows} ({verdict})")
                if backlog:  # CPU time: a figure the machine's other load barely moves
                    print(f"[{mode}] CPU per message: bare {bare_cpu * 1e6:.1f} µs, vigie "
                          f"{cpu * 1e6:.1f} µs (its process) + {pg_cpu * 1e6:.1f} µs "
                          f"(its PostgreSQL backends); bare/vigie process "
                          f"{ratio(bare_cpu, cpu):.2f}")
        finally:
            broker.terminate()
            broker.wait()


if __name__ == "__main__":
    asyncio.run(main())
