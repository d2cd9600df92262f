"""Re-learning many cameras' references after a planned change: the bulk API call, the
reference state in the camera views, and `vigie cameras relearn --wait` against a running
node (real PostgreSQL, real RTSP streams from the GStreamer harness)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.api.test_api import OpenApi
from tests.cameras.harness import RtspServer
from tests.conftest import eventually, make_config
from vigie.app import Node, running_node
from vigie.cameras._learning import ReferenceStatus
from vigie.cameras._reference import COARSE_SIZE, Reference
from vigie.cameras._worker import Sample
from vigie.store._tokens import create_token

NO_BROKER = "mqtt://127.0.0.1:1"  # the MQTT side of the node is not started
SITE = "clg-test-relearn"
OTHER = "clg-test-relearn-autre"
# One keyframe a second, each analysed: a reference from the first ten (MIN_SAMPLES).
CHECKS = {"offline_after": "3s", "analyse_every": "0.5s", "learn_for": "2s",
          "bad_samples": 2, "good_samples": 2}
PASSWORD = "S3cr3t-Zebra-42"
REFUSED = "rtsp://admin:S3cr3t-Zebra-42@127.0.0.1:9/nothing"  # discard port: refused at once
VIGIE = str(Path(sys.executable).with_name("vigie"))


def _sites(urls: dict[str, str]) -> list[dict[str, Any]]:
    return [{"id": SITE, "name": "Collège des tests", "uai": "0789996X", "cameras": [
                {"id": cid, "name": cid, "zone": "cour", "url": url, "checks": CHECKS}
                for cid, url in urls.items()]},
            {"id": OTHER, "name": "Collège voisin", "uai": "0789995W"}]


@pytest.fixture
async def node(fresh_dsn: str, rtsp_server: RtspServer, h264_clip: Path
               ) -> AsyncIterator[Node]:
    mounts = {f"cam-{i}": f"relearn-{i}" for i in range(2)}
    urls = {cam: rtsp_server.add_clip(mount, h264_clip) for cam, mount in mounts.items()}
    urls["cam-0"] = urls["cam-0"].replace("rtsp://", f"rtsp://admin:{PASSWORD}@")
    urls["cam-off"] = REFUSED
    config = make_config(fresh_dsn, NO_BROKER, sites=_sites(urls),
                         node={"camera_workers": 1})
    try:
        async with running_node(config, with_mqtt=False) as node:
            yield node
    finally:
        for mount in mounts.values():
            rtsp_server.remove(mount)


@pytest.fixture
async def offline_node(fresh_dsn: str) -> AsyncIterator[Node]:
    """Cameras that never answer: enough for what is refused before any learning."""
    urls = {"cam-a": REFUSED, "cam-b": REFUSED.replace("admin:S3cr3t-Zebra-42@", "")}
    config = make_config(fresh_dsn, NO_BROKER, sites=_sites(urls))
    async with running_node(config, with_mqtt=False) as node:
        yield node


async def _token(node: Node, role: str, sites: list[str] | None = None) -> str:
    async with node.store.connection() as conn:
        token, _ = await create_token(conn, name=f"{role}-{uuid.uuid4().hex[:8]}", role=role,
                                      sites=sites, expires_at=None)
    return token


class _Wrong(dict[str, Any]):
    def __bool__(self) -> bool:
        return False


async def _spec(http: aiohttp.ClientSession) -> OpenApi:
    async with http.get("/api/v1/openapi.json") as r:
        return OpenApi(await r.json())


async def _references(http: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
    async with http.get(f"/api/v1/cameras?site={SITE}") as r:
        assert r.status == 200
        text = await r.text()
    assert PASSWORD not in text
    body = json.loads(text)
    # Every reference state as documented (no undocumented field either).
    (await _spec(http)).check("GET", "/api/v1/cameras", 200, body)
    return {c["id"]: {**c["reference"], "state": c["state"]} for c in body["items"]}


def _learned_since(refs: dict[str, dict[str, Any]], cameras: list[str], since: datetime
                   ) -> Any:
    wrong = {c: refs[c] for c in cameras if refs[c]["status"] != "learned"
             or datetime.fromisoformat(refs[c]["learned_at"]) < since}
    return True if not wrong else _Wrong(wrong)


async def test_a_site_is_relearned_and_followed_in_the_camera_views(node: Node) -> None:
    token = await _token(node, "technician", [SITE])
    async with aiohttp.ClientSession(node.api_url,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
        # First learning, from the start of the node: the offline camera has none.
        await eventually(lambda: _first_learned(http), timeout=40)
        before = await _references(http)
        assert before["cam-off"] == {"status": "none", "learn_for": 2.0, "state": "offline"}

        async with http.post(f"/api/v1/sites/{SITE}/cameras/reference") as r:
            assert r.status == 202, await r.text()
            answer = await r.json()
        (await _spec(http)).check("POST", f"/api/v1/sites/{SITE}/cameras/reference", 202,
                                  answer)
        requested = datetime.fromisoformat(answer["requested_at"])
        assert answer["site"] == SITE
        assert {i["camera"]: (i["relearn"], i["state"]) for i in answer["items"]} == {
            "cam-0": ("learning", "ok"), "cam-1": ("learning", "ok"),
            "cam-off": ("learning", "offline")}

        # At once: the old references are forgotten, the cameras learn from zero.
        during = await _references(http)
        for cam in ("cam-0", "cam-1"):
            assert during[cam]["status"] == "learning", during
            assert 0 <= during[cam]["progress"] < 1 and during[cam]["learn_for"] == 2.0
        seen_progress: set[float] = set()

        async def relearned() -> Any:
            refs = await _references(http)
            seen_progress.update(refs[c].get("progress", 1.0) for c in ("cam-0", "cam-1"))
            return _learned_since(refs, ["cam-0", "cam-1"], requested)

        await eventually(relearned, timeout=40, interval=0.3)
        assert any(0 < p < 1 for p in seen_progress), seen_progress  # partway, shown
        after = await _references(http)
        for cam in ("cam-0", "cam-1"):
            assert after[cam]["samples"] >= 10
            assert after[cam]["learned_at"] != before[cam]["learned_at"]
        assert after["cam-off"]["status"] == "none"

    # Stored too: a restarted node would carry on with the new references.
    assert node.cameras is not None
    await node.cameras.flush()
    async with node.store.connection() as conn:
        stored = {r["camera"]: r["learned_at"] for r in await conn.fetch(
            "SELECT camera, learned_at FROM camera_references WHERE site = $1", SITE)}
        audit = await conn.fetch("SELECT actor, site, outcome, details FROM audit_log "
                                 "WHERE action = 'relearn_site'")
    assert set(stored) == {"cam-0", "cam-1"}
    assert [(a["site"], a["outcome"]) for a in audit] == [(SITE, "202")]
    details = audit[0]["details"]
    details = json.loads(details) if isinstance(details, str) else details
    assert details == {"cameras": ["cam-0", "cam-1", "cam-off"], "learning": 3,
                       "role": "technician"}


async def _first_learned(http: aiohttp.ClientSession) -> Any:
    refs = await _references(http)
    wrong = {c: refs[c] for c in ("cam-0", "cam-1") if refs[c]["status"] != "learned"}
    return True if not wrong else _Wrong(wrong)


async def test_a_list_of_cameras_relearns_those_only(node: Node) -> None:
    token = await _token(node, "admin")
    async with aiohttp.ClientSession(node.api_url,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
        await eventually(lambda: _first_learned(http), timeout=40)
        before = await _references(http)
        async with http.post(f"/api/v1/sites/{SITE}/cameras/reference",
                             json={"cameras": ["cam-1", "cam-1"]}) as r:
            assert r.status == 202
            answer = await r.json()
        assert [i["camera"] for i in answer["items"]] == ["cam-1"]
        requested = datetime.fromisoformat(answer["requested_at"])

        async def relearned() -> Any:
            return _learned_since(await _references(http), ["cam-1"], requested)

        await eventually(relearned, timeout=40, interval=0.3)
        assert (await _references(http))["cam-0"]["learned_at"] == before["cam-0"]["learned_at"]


async def vigie(*args: str, token: str = "") -> tuple[int, str, str]:
    """The CLI in a subprocess while this event loop keeps serving the node."""
    env = {"PATH": "/usr/bin:/bin", "VIGIE_TOKEN": token}
    proc = await asyncio.create_subprocess_exec(VIGIE, *args, env=env,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_relearns_a_site_and_waits_for_it(node: Node) -> None:
    token = await _token(node, "technician")
    async with aiohttp.ClientSession(node.api_url,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
        await eventually(lambda: _first_learned(http), timeout=40)

    code, out, err = await vigie("cameras", "relearn", "--site", SITE, "--wait",
                                 "--url", node.api_url, token=token)
    print(out, err)  # what a technician sees (pytest -s)
    # The offline camera cannot learn: the command says so and does not claim success.
    assert code == 1, err
    lines = out.splitlines()
    assert lines[0] == f"{SITE}: 3 camera(s) — 2 learned, 0 still learning, 1 offline"
    assert lines[1].split() == ["learned:", "cam-0,", "cam-1"]
    assert lines[2].split()[:2] == ["offline:", "cam-off"]
    # Not a terminal: plain progress lines on stderr, the last one with every camera in.
    progress = [ln for ln in err.splitlines() if ln.startswith(f"{SITE}: references: ")]
    assert progress and progress[-1].startswith(f"{SITE}: references: 2/3")
    assert "\r" not in err and "\x1b[" not in err
    assert PASSWORD not in out + err

    code, out, err = await vigie("cameras", "relearn", "--site", SITE, "--camera", "cam-1",
                                 "--wait", "--token", token, "--url", node.api_url)
    assert code == 0, err
    assert out.splitlines()[0] == f"{SITE}: 1 camera(s) — 1 learned, 0 still learning, 0 offline"

    code, out, err = await vigie("cameras", "relearn", "--site", SITE, "--camera", "cam-0",
                                 "--url", node.api_url, token=token)
    assert code == 0 and "re-learning the reference of 1 camera(s)" in out, err


async def test_cli_draws_a_bar_on_a_terminal(node: Node) -> None:
    token = await _token(node, "technician")
    async with aiohttp.ClientSession(node.api_url,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
        await eventually(lambda: _first_learned(http), timeout=40)
    primary, secondary = pty.openpty()  # the progress goes to stderr: make it a terminal
    try:
        proc = await asyncio.create_subprocess_exec(
            VIGIE, "cameras", "relearn", "--site", SITE, "--camera", "cam-1", "--wait",
            "--url", node.api_url, env={"PATH": "/usr/bin:/bin", "VIGIE_TOKEN": token},
            stdout=asyncio.subprocess.PIPE, stderr=secondary)
        os.close(secondary)
        # Read as it draws: a terminal's buffer is small, and a full one would block it.
        screen_read = asyncio.create_task(asyncio.to_thread(_read_terminal, primary))
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
        screen = await asyncio.wait_for(screen_read, 10)
    finally:
        os.close(primary)
    assert proc.returncode == 0, screen
    drawn = screen.decode()
    # One line redrawn in place, ending full, then the summary on stdout.
    assert "\r\x1b[K" in drawn and f"{SITE}: references [" + "#" * 24 + "] 100% 1/1" in drawn
    assert drawn.count("\n") == 1, drawn
    assert out.decode().startswith(f"{SITE}: 1 camera(s) — 1 learned")


def _read_terminal(fd: int) -> bytes:
    screen = b""
    with contextlib.suppress(OSError):  # EIO once the child has closed its side
        while chunk := os.read(fd, 4096):
            screen += chunk
    return screen


async def test_cli_says_why_it_cannot_relearn(offline_node: Node) -> None:
    url = offline_node.api_url
    viewer = await _token(offline_node, "viewer")
    tech = await _token(offline_node, "technician")
    for args, token, message in [
        (("--site", SITE), "", "a technician or admin token is needed"),
        (("--site", SITE), "nope", "refused (401)"),
        (("--site", SITE), viewer, "refused (403)"),
        (("--site", "nowhere"), tech, "refused (404): site 'nowhere' not found"),
        (("--site", SITE, "--camera", "cam-zz"), tech,
         "refused (422): cameras: not cameras of this site: 'cam-zz'"),
        (("--site", OTHER), tech, "refused (409)"),
        (("--site", SITE, "--wait", "--timeout", "0"), tech, "--timeout must be a positive number"),
    ]:
        code, _, err = await vigie("cameras", "relearn", *args, "--url", url, token=token)
        assert code in (1, 2) and message in err, (args, code, err)
    code, _, err = await vigie("cameras", "relearn", "--site", SITE, "--url",
                               "http://127.0.0.1:9", token=tech)
    assert code == 2 and "unreachable" in err


async def test_cli_gives_up_at_its_timeout_with_cameras_still_learning(node: Node) -> None:
    # A timeout shorter than any learning: the summary lists them as still learning.
    token = await _token(node, "technician")
    code, out, err = await vigie("cameras", "relearn", "--site", SITE, "--camera", "cam-0",
                                 "--wait", "--timeout", "0.1", "--url", node.api_url,
                                 token=token)
    assert code == 1, err
    assert out.splitlines()[0] == f"{SITE}: 1 camera(s) — 0 learned, 1 still learning, 0 offline"
    assert out.splitlines()[1].split()[:3] == ["still", "learning:", "cam-0"]


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"{not json", 400, "body is not valid JSON"),
    (b"[]", 422, "expected a JSON object"),
    (b'{"camera": ["cam-a"]}', 422, "unknown field(s): camera"),
    (b'{"cameras": "cam-a"}', 422, "cameras: expected a list of camera ids"),
    (b'{"cameras": []}', 422, "cameras: must not be empty"),
    (b'{"cameras": [1]}', 422, "cameras: expected camera ids (strings)"),
    (b'{"cameras": ["cam-a", "../x"]}', 422, "cameras: not cameras of this site: '../x'"),
    (json.dumps({"cameras": ["cam-a"] * 1001}).encode(), 422, "cameras: at most 1000"),
])
async def test_bad_bodies_are_refused_and_nothing_is_relearned(
        offline_node: Node, body: bytes, status: int, message: str) -> None:
    token = await _token(offline_node, "admin")
    assert offline_node.cameras is not None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(offline_node.api_url) as http, http.post(
            f"/api/v1/sites/{SITE}/cameras/reference", data=body, headers=headers) as r:
        assert r.status == status
        assert message in (await r.json())["error"]["message"]
    assert all(s.reference.relearn_at is None for s in offline_node.cameras.cameras.values())


async def test_roles_and_sites_are_enforced(offline_node: Node) -> None:
    url = f"/api/v1/sites/{SITE}/cameras/reference"
    async with aiohttp.ClientSession(offline_node.api_url) as http:
        async with http.post(url) as r:
            assert r.status == 401
        for role, sites, status in [("viewer", None, 403), ("operator", None, 403),
                                    ("technician", [OTHER], 404), ("technician", [SITE], 202),
                                    ("admin", None, 202)]:
            token = await _token(offline_node, role, sites)
            async with http.post(url, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == status, (role, sites, await r.text())
                assert PASSWORD not in await r.text()
        token = await _token(offline_node, "admin")
        async with http.post(f"/api/v1/sites/{OTHER}/cameras/reference",
                             headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 409 and (await r.json())["error"]["code"] == "no_cameras"


# --- the node's bookkeeping, without a worker ----------------------------------------------


def _reference_bytes(learned_at: float) -> bytes:
    structure = [[[0.5] * COARSE_SIZE[0]] * COARSE_SIZE[1]] * 2
    return Reference(sharpness=10.0, structure=structure, learned_at=learned_at,  # type: ignore[arg-type]
                     refreshed_at=learned_at + 5, samples=12).to_bytes()


def _sample(at: float, learning: tuple[float, int, float] | None) -> Sample:
    return Sample(key="s/c", at=at, connected=True, last_packet_at=at, fps=10, bitrate=1,
                  width=640, height=360, codec="h264", reconnects=0, reasons=frozenset(),
                  measures=None, analysed_at=None, check_seconds=None, snapshot_at=None,
                  error=None, learning=learning)


def test_a_refresh_of_the_old_reference_in_flight_is_not_taken_for_the_new_one() -> None:
    status = ReferenceStatus()
    status.known(_reference_bytes(1000.0))
    assert status.view(None, 120, receiving=False)["status"] == "learned"
    status.relearn(2000.0)
    # Sent by the worker before it heard of the re-learn: dropped, not stored.
    assert not status.learned(_reference_bytes(1000.0))
    assert status.view(_sample(1999.0, None), 120, receiving=True) == {
        "status": "learning", "progress": 0.0, "learned_for": 0.0, "learn_for": 120,
        "samples": 0}
    # A report from before the request says nothing of the new learning either.
    assert status.view(_sample(1999.5, (60.0, 30, 0.5)), 120, receiving=True)["progress"] == 0
    assert status.view(_sample(2001.0, (1.0, 2, 0.2)), 120, receiving=True)["progress"] == 0.2
    assert status.view(_sample(2001.0, (1.0, 2, 0.2)), 120, receiving=False)["status"] == "none"
    assert status.learned(_reference_bytes(2010.0))
    view = status.view(_sample(2011.0, None), 120, receiving=True)
    assert view["status"] == "learned" and view["samples"] == 12
    assert datetime.fromisoformat(view["learned_at"]).timestamp() == 2010.0
    assert not status.learned(b"not a reference")


def test_the_summary_names_each_group() -> None:
    from vigie.cli_relearn import LearningRound, render_summary

    round_ = LearningRound(site="s", requested_at=datetime.fromisoformat(
        "2026-11-28T21:00:00+00:00"), cameras=["a", "b", "c"], elsewhere=["d"])
    round_.views = {
        "a": {"state": "ok", "reference": {"status": "learned",
                                           "learned_at": "2026-11-28T21:00:05+00:00"}},
        "b": {"state": "ok", "reference": {"status": "learned",  # the old one: not done
                                           "learned_at": "2026-11-28T20:00:00+00:00"}},
        "c": {"state": "offline", "reference": {"status": "none"}},
        "e": {"state": "degraded", "reasons": ["black"],
              "reference": {"status": "learning", "progress": 0.25}}}
    round_.cameras.append("e")
    out = io.StringIO()
    render_summary(round_, out, waited=True)
    assert out.getvalue().splitlines() == [
        "s: 5 camera(s) — 1 learned, 2 still learning, 1 offline",
        "  learned:        a",
        "  still learning: b 0 %, e 25 % (degraded: black)",
        "  offline:        c (cannot learn: will once back)",
        "  not re-learned: d (watched by another node: ask that node)"]
