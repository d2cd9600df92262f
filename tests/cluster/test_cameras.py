"""Every camera on every node's API: three real nodes on one database and the RTSP harness;
an operator behind a Service may reach any node, and must see every configured camera with
its state, measurements, picture, and the node that watches it.

The cameras' URLs carry credentials: they must appear in no answer of any node (the
harness's server does not check them)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.cameras.harness import RtspServer
from tests.cluster.test_nodes import SITE, Clips, Nodes, _spread, _token, eventually, nodes
from vigie.app import Node

pytestmark = pytest.mark.timeout(300)

SECRET = "S3cr3t-Cluster-Zebra"
CAMERAS = 30


@pytest.fixture(scope="module")
def secret_cameras(rtsp_server_process: RtspServer, h264_clip: Path) -> Iterator[Clips]:
    tag = uuid.uuid4().hex[:4]
    clips = {f"cam-{i:02d}": f"view-{tag}-{i:02d}" for i in range(CAMERAS)}
    for mount in clips.values():
        rtsp_server_process.add_clip(mount, h264_clip)
    yield {cam: (mount, rtsp_server_process.url(f"clip/{mount}", f"vigie:{SECRET}"))
           for cam, mount in clips.items()}
    for mount in clips.values():
        rtsp_server_process.remove(mount)


class Api:
    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self.http, self.token = http, token

    async def get(self, node: Node, path: str, status: int = 200) -> Any:
        async with self.http.get(f"{node.api_url}{path}",
                                 headers={"Authorization": f"Bearer {self.token}"}) as r:
            body = await r.read()
            assert r.status == status, (r.status, body[:300])
            assert SECRET.encode() not in body
            if r.content_type == "application/json":
                return await r.json()
            return r.headers, body


def _holders(cluster: Nodes) -> dict[str, str]:
    return {cam: name for name, cams in cluster.judging().items() for cam in cams}


async def _settled(api: Api, cluster: Nodes, node: Node) -> Any:
    """Every camera listed by `node`, each `ok` with its measurements, and said to be
    watched by the node that judges it."""
    body = await api.get(node, "/api/v1/cameras")
    holders = _holders(cluster)
    wrong = {f"{c['site']}/{c['id']}": (c["state"], c["node"], c["fps"], c["last_frame_at"])
             for c in body["items"]
             if c["state"] != "ok" or c["node"] != holders.get(f"{c['site']}/{c['id']}")
             or not c["fps"] or c["last_frame_at"] is None}
    return True if len(body["items"]) == CAMERAS and not wrong else (len(body["items"]), wrong)


async def test_every_node_lists_every_camera_with_its_state_holder_and_picture(
        fresh_dsn: str, mqtt_url: str, secret_cameras: Clips, rtsp_server: RtspServer
) -> None:
    async with nodes(fresh_dsn, mqtt_url, secret_cameras) as cluster, \
            aiohttp.ClientSession() as http:
        started = [await cluster.start(name) for name in ("n1", "n2", "n3")]
        await eventually(lambda: _spread(cluster, {"n1": 10, "n2": 10, "n3": 10}, 0),
                         timeout=60)
        api = Api(http, await _token(started[0], "technician"))
        for node in started:
            await _async_eventually(lambda n=node: _settled(api, cluster, n), timeout=60)

        # The site's summary counts them all, on any node.
        for node in started:
            site = await api.get(node, f"/api/v1/sites/{SITE}")
            assert site["camera_states"] == {"ok": CAMERAS}, site

        # One camera of n2's, seen from n1: n1 has no reading of it, so all of this comes
        # from what n2 published.
        key = sorted(cluster.judging()["n2"])[0]
        cam = key.split("/")[1]
        n1, n2, n3 = started
        assert n1.cameras is not None and n1.cameras.cameras[key].sample is None
        one = await api.get(n1, f"/api/v1/cameras/{SITE}/{cam}")
        assert one["node"] == "n2" and one["state"] == "ok" and one["as_of"] is not None
        assert one["width"] == 640 and one["height"] == 360 and one["codec"] == "h264"
        assert one["url"].startswith("rtsp://***@127.0.0.1:")
        assert "availability" in one and "checks" in one
        local = await api.get(n2, f"/api/v1/cameras/{SITE}/{cam}")
        assert local["node"] == "n2" and local["as_of"] is None

        # Its picture, from n1, which never read that stream: asked of n2 through the
        # database, written there by n2, served by n1.
        async def picture() -> Any:
            async with http.get(f"{n1.api_url}/api/v1/cameras/{SITE}/{cam}/snapshot",
                                headers={"Authorization": f"Bearer {api.token}"}) as r:
                return {"headers": r.headers, "body": await r.read()} if r.status == 200 else None

        got = await _async_eventually(picture, timeout=30)
        headers, body = got["headers"], got["body"]
        assert headers["Content-Type"] == "image/jpeg" and "Last-Modified" in headers
        conn = await asyncpg.connect(fresh_dsn)
        try:
            row = await conn.fetchrow("SELECT node, snapshot FROM camera_status "
                                      "WHERE site = $1 AND camera = $2", SITE, cam)
        finally:
            await conn.close()
        assert body[:2] == b"\xff\xd8" and body == bytes(row["snapshot"])
        assert row["node"] == "n2"

        # What n1 finds there is old: it asks n2 (NOTIFY), which writes its latest at once.
        async def aged() -> Any:
            conn = await asyncpg.connect(fresh_dsn)
            try:
                return await conn.fetchval(
                    "UPDATE camera_status SET snapshot_at = now() - interval '1 hour' "
                    "WHERE site = $1 AND camera = $2 RETURNING snapshot_at", SITE, cam)
            finally:
                await conn.close()

        old = await aged()

        async def fresh() -> Any:
            got = await picture()
            modified = got and parsedate_to_datetime(got["headers"]["Last-Modified"])
            return got if modified and modified > old + timedelta(minutes=30) else None

        assert (await _async_eventually(fresh, timeout=30))["body"][:2] == b"\xff\xd8"

        # A fault on that camera: every node lists it offline, watched by n2, at once (its
        # transition is newer than n2's last published view).
        rtsp_server.fault(secret_cameras[cam][0], "stop")
        try:
            for node in (n1, n3):
                offline = await _async_eventually(
                    lambda n=node: _listed(api, n, "offline"), timeout=30)
                assert [(c["id"], c["node"], c["reasons"]) for c in offline] == [
                    (cam, "n2", ["offline"])]
                listed = await api.get(node, "/api/v1/sites")
                assert [s["camera_states"] for s in listed["items"]] == [
                    {"ok": CAMERAS - 1, "offline": 1}]
            # n2 raised the alert with the camera's last picture, kept on n2's disk: n1
            # serves it too (the copy n2 put in the database).
            kept = await _async_eventually(lambda: _alert_picture(api, n1, cam), timeout=30)
            assert kept["body"][:2] == b"\xff\xd8"
            assert not (n1.config.node.data_dir / kept["path"]).exists()
        finally:
            rtsp_server.fault(secret_cameras[cam][0], "start")
        await _async_eventually(lambda: _listed_none(api, n1, "offline"), timeout=40)

        # Re-learning a reference needs the camera's holder.
        async with http.post(f"{n1.api_url}/api/v1/cameras/{SITE}/{cam}/reference",
                             headers={"Authorization": f"Bearer {api.token}"}) as r:
            assert r.status == 409 and (await r.json())["error"]["code"] == "watched_elsewhere"


async def test_a_departed_nodes_cameras_are_listed_under_their_new_holder(
        fresh_dsn: str, mqtt_url: str, secret_cameras: Clips) -> None:
    async with nodes(fresh_dsn, mqtt_url, secret_cameras) as cluster, \
            aiohttp.ClientSession() as http:
        n1 = await cluster.start("n1")
        await cluster.start("n2")
        await eventually(lambda: _spread(cluster, {"n1": 15, "n2": 15}, 0), timeout=60)
        api = Api(http, await _token(n1, "viewer"))
        await _async_eventually(lambda: _settled(api, cluster, n1), timeout=60)
        moved = cluster.judging()["n2"]
        await cluster.stop("n2")
        await eventually(lambda: _spread(cluster, {"n1": 30}, 0), timeout=20)
        body = await api.get(n1, "/api/v1/cameras")
        assert {f"{c['site']}/{c['id']}" for c in body["items"] if c["node"] == "n1"} >= moved
        assert {c["node"] for c in body["items"]} == {"n1"}


async def _alert_picture(api: Api, node: Node, cam: str) -> Any:
    """The picture of the camera's open alert, served by `node` (None until there is one)."""
    alerts = await api.get(node, f"/api/v1/alerts?state=open&site={SITE}")
    pictures = [s for a in alerts["items"] if a["source"] == cam for s in a["snapshots"]]
    if not pictures:
        return None
    async with api.http.get(f"{node.api_url}{pictures[0]['url']}",
                            headers={"Authorization": f"Bearer {api.token}"}) as r:
        if r.status != 200:
            return None
        body = await r.read()
    conn = await asyncpg.connect(node.dsn)
    try:
        path = await conn.fetchval("SELECT path FROM snapshots WHERE id = $1",
                                   pictures[0]["id"])
    finally:
        await conn.close()
    return {"body": body, "path": path}


async def _listed(api: Api, node: Node, state: str) -> Any:
    body = await api.get(node, f"/api/v1/cameras?status={state}")
    return body["items"] or None


async def _listed_none(api: Api, node: Node, state: str) -> bool:
    return not (await api.get(node, f"/api/v1/cameras?status={state}"))["items"]


async def _async_eventually(check: Any, timeout: float) -> Any:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last is True or (last and not isinstance(last, tuple)):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout}s (last: {last!r})")
