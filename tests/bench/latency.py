"""Alert latency benchmark: MQTT publish → WebSocket message, under background load.

    .venv/bin/python tests/bench/latency.py [--rate 1000] [--probes 10] [--seconds 30]

On a Mosquitto of our own and a fresh PostgreSQL database, a vigie node runs as its own
process (`vigie run`). Meanwhile:

- background: a publisher process sends `--rate` sensor events per second (QoS 1) to 50
  sites × 20 sensors: doors closing, intrusion panels reporting normal, batteries fine, all
  stored in PostgreSQL and run through the rules, none raising an alert;
- probes: another publisher sends `--probes` door openings per second on 50 doors of a
  closed school (each raises a critical alert; the door closes a second later, resolving it).
  The time of each probe's publish is taken just before it is handed to paho;
- vigie: a WebSocket client on `GET /api/v1/stream` times each probe's `alert.opened`;
- baseline, in the same run and on the same broker: a bare paho subscriber (QoS 1) on the
  probe topics times the same probe messages.

It prints p50/p99/max of both, where vigie's time goes (from the node's own timestamps:
each event's received_at, and when its alert's feed row was written), the load average before
and after (the machine is shared), the node's CPU, and checks that every probe reached both
subscribers and that the node stored every event.

The path holds two durable commits in series (the ingest batch with the alert, then the live
feed's row), plus the batch in flight when the probe arrives: on a disk whose fsync takes
several ms, that is most of the figure. `--async-commit` runs the same with PostgreSQL's
synchronous_commit off for the benchmark's database, to show the rest of the path.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench._common import (
    PG_ADMIN_DSN,
    ROOT,
    always_open,
    cpu_seconds,
    create_database,
    drop_database,
    free_port,
    loadavg,
    percentiles,
    ratio,
    start_broker,
    start_vigie,
    stop_vigie,
    wait_sql,
)

SITES, SENSORS, PROBE_DOORS = 50, 20, 50
PROBE_SITE = "clg-probe"
WARMUP = 3.0  # background only, before the first probe


def write_config(path: Path, dsn: str, mqtt_port: int, api_port: int) -> None:
    always = always_open()
    lines = [
        "node: {name: bench-latency, data_dir: " + str(path.parent / "var") + "}",
        f'database: {{dsn: "{dsn}"}}',
        f'mqtt: {{url: "mqtt://127.0.0.1:{mqtt_port}", '
        f"client_id: bench-latency-{uuid.uuid4().hex[:6]}}}",
        f'api: {{listen: "127.0.0.1:{api_port}"}}',
        "logging: {level: warning}",
        "sites:",
    ]
    for s in range(SITES):
        lines.append(f'  - {{id: clg-{s:03d}, name: "Collège {s}", uai: "078{s:04d}A", '
                     f"opening_hours: {{{always}}}, sensors: [")
        for k in range(SENSORS):
            kind = "intrusion" if k == 0 else "door"
            lines.append(f"      {{id: s{k:02d}, kind: {kind}, zone: z{k % 4}}},")
        lines.append("    ]}")
    # Never open: every door opening there is critical (the school is closed).
    lines.append(f'  - {{id: {PROBE_SITE}, name: "Collège sonde", uai: "0789999Z", sensors: [')
    for k in range(PROBE_DOORS):
        lines.append(f"      {{id: p{k:02d}, kind: door, zone: z{k % 4}}},")
    lines.append("    ]}")
    path.write_text("\n".join(lines) + "\n")


def _client(port: int, name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def background(port: int, rate: int, stop: Any, sent: Any) -> None:
    """`rate` events per second, paced in 10 ms ticks, none raising an alert."""
    client = _client(port, "bench-bg")
    n = 0
    start = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - start) * rate)
        while n < due:
            site, sensor = n % SITES, (n // SITES) % SENSORS
            ts = datetime.now(UTC).isoformat()
            if sensor == 0:
                body = {"id": f"bg{n}", "ts": ts, "kind": "intrusion", "state": "normal"}
            else:
                body = {"id": f"bg{n}", "ts": ts, "kind": "door", "state": "closed",
                        "data": {"battery": 87}}
            client.publish(f"vigie/clg-{site:03d}/s{sensor:02d}/event", json.dumps(body),
                           qos=1)
            n += 1
        sent.value = n
        time.sleep(0.01)
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()


def probes(port: int, rate: float, count: int, published: Any, wall: Any, go: Any) -> None:
    """Door openings on the probe site, each closed a second later; publish times (monotonic)
    in `published`, indexed by probe number (carried in the event's ts, to the microsecond)."""
    client = _client(port, "bench-probe")
    go.wait()
    start = time.monotonic()
    closes: list[tuple[float, int]] = []
    for i in range(count):
        due = start + i / rate
        while closes and closes[0][0] <= time.monotonic():
            _, k = closes.pop(0)
            client.publish(f"vigie/{PROBE_SITE}/p{k:02d}/event",
                           json.dumps({"kind": "door", "state": "closed",
                                       "ts": datetime.now(UTC).isoformat()}), qos=1)
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        k = i % PROBE_DOORS
        body = json.dumps({"id": f"probe{i}", "kind": "door", "state": "open",
                           "ts": probe_ts(i)})
        published[i] = time.monotonic()
        wall[i] = time.time()
        client.publish(f"vigie/{PROBE_SITE}/p{k:02d}/event", body, qos=1)
        closes.append((time.monotonic() + 1.0, k))
    time.sleep(1.5)
    for _, k in closes:
        client.publish(f"vigie/{PROBE_SITE}/p{k:02d}/event",
                       json.dumps({"kind": "door", "state": "closed",
                                   "ts": datetime.now(UTC).isoformat()}), qos=1)
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()


EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def probe_ts(i: int) -> str:
    """A probe's number, readable back from the alert's opened_at."""
    return datetime.fromtimestamp(EPOCH.timestamp() + i * 1e-3, UTC).isoformat()


def probe_of(opened_at: str) -> int:
    return round((datetime.fromisoformat(opened_at).timestamp() - EPOCH.timestamp()) * 1e3)


def bare(port: int, received: Any, ready: Any, stop: Any) -> None:
    """The baseline: paho, QoS 1, timing each probe opening on arrival."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{uuid.uuid4().hex}",
                         protocol=paho.MQTTv5)

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe(f"vigie/{PROBE_SITE}/+/event", qos=1)

    def on_subscribe(c: Any, u: Any, mid: Any, rc: Any, p: Any) -> None:
        ready.set()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        now = time.monotonic()
        body = json.loads(msg.payload)
        if body.get("state") == "open":
            received[int(body["id"].removeprefix("probe"))] = now

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


async def create_token(config: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vigie", "token", "create", "--role", "viewer", "--name",
        f"bench-{uuid.uuid4().hex[:6]}", "--config", str(config),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    out, _ = await proc.communicate()
    token = out.decode().strip().splitlines()[-1].split()[-1]
    return token


async def listen(url: str, token: str, received: dict[int, tuple[float, float]],
                 stop: asyncio.Event, ready: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{url}/api/v1/stream?token={token}", heartbeat=30) as ws:
        ready.set()
        while not stop.is_set():
            try:
                msg = await asyncio.wait_for(ws.receive(), 0.5)
            except TimeoutError:
                continue
            now, wall = time.monotonic(), time.time()
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            body = json.loads(msg.data)
            if body.get("type") == "alert.opened" and body.get("site") == PROBE_SITE:
                received.setdefault(probe_of(body["alert"]["opened_at"]), (now, wall))


async def breakdown(dsn: str, count: int, wall: list[float],
                    received: dict[int, tuple[float, float]]) -> dict[str, list[float]]:
    """Where the time goes, per probe, from the node's own timestamps (wall clock): the
    event's received_at, and when the feed row of its alert was written (stored_at)."""
    conn = await asyncpg.connect(dsn)
    try:
        events = {probe_of(r["ts"].isoformat()): r["received_at"].timestamp() for r in
                  await conn.fetch("SELECT ts, received_at FROM events "
                                   f"WHERE site = '{PROBE_SITE}' AND state = 'open'")}
        feed = {probe_of(r["opened_at"]): r["stored_at"].timestamp() for r in await conn.fetch(
            "SELECT payload->'alert'->>'opened_at' AS opened_at, stored_at FROM feed "
            f"WHERE type = 'alert.opened' AND site = '{PROBE_SITE}'")}
    finally:
        await conn.close()
    probes = [i for i in range(count) if i in events and i in feed and i in received]
    return {
        "publish -> received by the node": [events[i] - wall[i] for i in probes],
        "received -> feed write begins": [feed[i] - events[i] for i in probes],
        "feed write -> WebSocket client": [received[i][1] - feed[i] for i in probes],
    }


async def ingest_batches(url: str) -> str:
    """Mean batch size and commit time of the node's ingest writer, from its /metrics."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        text = await r.text()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("vigie_db_write_seconds_sum", "vigie_db_write_seconds_count",
                    "vigie_db_write_batch_size_sum", "vigie_db_write_batch_size_count"):
            values[name] = float(value)
    batches = values.get("vigie_db_write_seconds_count") or 1.0
    size = values.get("vigie_db_write_batch_size_sum", 0.0) / batches
    ms = 1000 * values.get("vigie_db_write_seconds_sum", 0.0) / batches
    return f"{batches:,.0f} batches of {size:.1f} messages, {ms:.2f} ms each on average"


async def run(args: argparse.Namespace, workdir: Path, dsn: str) -> int:
    broker, mqtt_port = start_broker(workdir)
    api_port = free_port()
    config = workdir / "vigie.yaml"
    write_config(config, dsn, mqtt_port, api_port)
    node = start_vigie(config)
    ctx = mp.get_context("spawn")
    stop_bg, stop_bare, go = ctx.Event(), ctx.Event(), ctx.Event()
    sent = ctx.Value("q", 0)
    count = int(args.probes * args.seconds)
    published = ctx.Array("d", count)
    published_wall = ctx.Array("d", count)
    bare_received = ctx.Array("d", count)
    processes: list[Any] = []
    try:
        await wait_sql(dsn, f"SELECT count(*) = {SITES + 1} FROM sites WHERE active")
        url = f"http://127.0.0.1:{api_port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(url + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        token = await create_token(config)
        bare_ready = ctx.Event()
        processes.append(ctx.Process(target=bare, args=(mqtt_port, bare_received, bare_ready,
                                                        stop_bare)))
        processes.append(ctx.Process(target=background, args=(mqtt_port, args.rate, stop_bg,
                                                              sent)))
        processes.append(ctx.Process(target=probes, args=(mqtt_port, args.probes, count,
                                                          published, published_wall, go)))
        for p in processes:
            p.start()
        bare_ready.wait(10)
        received: dict[int, tuple[float, float]] = {}
        stop_ws, ws_ready = asyncio.Event(), asyncio.Event()
        listener = asyncio.create_task(listen(url, token, received, stop_ws, ws_ready))
        await asyncio.wait_for(ws_ready.wait(), 10)
        load_before = loadavg()
        await asyncio.sleep(WARMUP)
        cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
        bg0 = sent.value
        go.set()
        await asyncio.to_thread(processes[2].join, args.seconds + 60)
        await asyncio.sleep(2.0)  # the last probes' messages
        cpu1, t1 = cpu_seconds(node.pid), time.monotonic()
        bg_rate = (sent.value - bg0) / (t1 - t0)
        load_after = loadavg()
        stop_bg.set()
        stop_ws.set()
        await listener
        processes[1].join(10)
        total_sent = sent.value
        stored = await wait_sql(
            dsn, f"SELECT count(*) FROM events WHERE sensor LIKE 's%' "
                 f"HAVING count(*) >= {total_sent}", timeout=60)
        stop_bare.set()
        processes[0].join(10)
        steps = await breakdown(dsn, count, list(published_wall), received)
        writer = await ingest_batches(url)
    finally:
        for p in processes:
            if p.is_alive():
                p.terminate()
        await stop_vigie(node)
        broker.terminate()
        broker.wait(10)

    vigie = [received[i][0] - published[i] for i in range(count) if i in received]
    base = [bare_received[i] - published[i] for i in range(count) if bare_received[i]]
    v50, v99, vmax = (x * 1000 for x in percentiles(vigie))
    b50, b99, bmax = (x * 1000 for x in percentiles(base))
    mode = "synchronous_commit off" if args.async_commit else "durable commits"
    print(f"latency [{mode}], MQTT publish -> WebSocket alert.opened ({len(vigie)}/{count} "
          f"probes at "
          f"{args.probes}/s over {args.seconds:.0f} s; background {bg_rate:,.0f} events/s, "
          f"{total_sent:,} stored: {stored:,})")
    print(f"  vigie:             p50 {v50:6.2f} ms   p99 {v99:6.2f} ms   max {vmax:6.2f} ms")
    print(f"  bare paho (QoS 1): p50 {b50:6.2f} ms   p99 {b99:6.2f} ms   max {bmax:6.2f} ms"
          f"   ({len(base)}/{count} probes)")
    print(f"  vigie - baseline:  p50 {v50 - b50:6.2f} ms   p99 {v99 - b99:6.2f} ms;   ratio p99 "
          f"{ratio(v99, b99):.1f}x")
    for step, values in steps.items():
        s50, s99, smax = (x * 1000 for x in percentiles(values))
        print(f"    {step:<34} p50 {s50:6.2f} ms   p99 {s99:6.2f} ms   max {smax:6.2f} ms")
    print(f"    (the node's ingest writer: {writer})")
    print(f"  node CPU {100 * (cpu1 - cpu0) / (t1 - t0):.0f} % of a core; load average "
          f"{load_before} before, {load_after} after ({os.cpu_count()} cores)")
    target = 20.0
    lost = count - len(vigie)
    verdict = "OK" if v99 <= target and not lost else "MISSED"
    print(f"  target p99 <= {target:.0f} ms: {verdict}" + (f" ({lost} probe(s) never came)"
                                                          if lost else ""))
    return 0 if verdict == "OK" else 1


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=1000, help="background events per second")
    parser.add_argument("--probes", type=float, default=10.0, help="alert-raising probes per s")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--async-commit", action="store_true",
                        help="synchronous_commit off on the benchmark's database")
    args = parser.parse_args()
    dsn = await create_database("vigie_bench")
    try:
        if args.async_commit:
            admin = await asyncpg.connect(PG_ADMIN_DSN)
            try:
                name = dsn.rpartition("/")[2]
                await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
            finally:
                await admin.close()
        with tempfile.TemporaryDirectory() as tmp:
            return await run(args, Path(tmp), dsn)
    finally:
        await drop_database(dsn)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
