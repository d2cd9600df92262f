"""deploy/alertmanager: `amtool check-config`, the routing tree through `amtool config routes
test`, and, on a real Alertmanager, the inhibition: an unreachable site mutes its camera
alerts, not another site's."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import free_port, wait_port
from tests.deploy.conftest import DEPLOY, run, tool

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"


def test_amtool_checks_the_config() -> None:
    result = run(tool("amtool"), "check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "4 inhibit rules" in result.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    ({"alertname": "VigieSiteUnreachable", "severity": "critical", "site": "clg-a"},
     "csu-critical"),
    ({"alertname": "intrusion", "severity": "critical", "site": "clg-a"}, "csu-critical"),
    ({"alertname": "VigieCameraDown", "severity": "major", "site": "clg-a", "camera": "c"},
     "csu"),
    ({"alertname": "blurred", "severity": "minor", "site": "clg-debussy-saint-germain"},
     "techniciens-secteur-nord"),
    ({"alertname": "blurred", "severity": "minor", "site": "clg-pasteur"}, "techniciens"),
    ({"alertname": "battery_low", "severity": "info", "site": "clg-pasteur"}, "techniciens"),
    ({"alertname": "VigieDatabaseDown", "severity": "critical", "instance": "n1:8080"},
     "exploitation"),
    # The node's own faults go to whoever runs it, even a critical one.
    ({"alertname": "VigieSpoolFull", "severity": "critical", "instance": "n1:8080"},
     "exploitation"),
    ({"alertname": "VigieCameraWorkerDown", "severity": "major", "instance": "n1:8080",
      "worker": "1"}, "exploitation"),
    ({"alertname": "VigieNotifierDeadLetters", "severity": "major", "instance": "n1:8080",
      "notifier": "salle"}, "exploitation"),
    ({"alertname": "something", "site": "clg-a"}, "csu"),  # no severity: the default route
])
def test_routing_by_severity_and_site(labels: dict[str, str], receiver: str) -> None:
    pairs = [f"{k}={v}" for k, v in labels.items()]
    result = run(tool("amtool"), "config", "routes", "test", f"--config.file={CONFIG}",
                 f"--verify.receivers={receiver}", *pairs)
    assert result.returncode == 0, f"{labels} went to {result.stdout.strip()}, not {receiver}"


# --- a real Alertmanager ----------------------------------------------------------------------


class Sink:
    """The webhook receivers, all pointed at one local HTTP server."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        for alert in body["alerts"]:
            self.received.append((request.path, alert["labels"]))
        return web.Response(text="ok")

    def labels(self, **match: str) -> list[dict[str, Any]]:
        return [labels for _, labels in self.received
                if all(labels.get(k) == v for k, v in match.items())]


@pytest.fixture
async def sink() -> AsyncIterator[tuple[Sink, int]]:
    sink = Sink()
    app = web.Application()
    app.router.add_post("/{tail:.*}", sink.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield sink, port
    await runner.cleanup()


def _fast_local_copy(tmp: Path, sink_port: int) -> Path:
    """The shipped config with its receivers on the local sink and its waits shortened."""
    config = yaml.safe_load(CONFIG.read_text())

    def shorten(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = "1s"
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            path = hook["url"].split("/", 3)[3]
            hook["url"] = f"http://127.0.0.1:{sink_port}/{path}"
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def alertmanager(tmp_path: Path, sink: tuple[Sink, int]) -> Iterator[str]:
    port = free_port()
    config = _fast_local_copy(tmp_path, sink[1])
    with (tmp_path / "stderr.log").open("wb") as log:
        proc = subprocess.Popen(
            [tool("prometheus-alertmanager"), f"--config.file={config}",
             f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--cluster.listen-address="],  # no gossip port: a single instance
            stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port("127.0.0.1", port, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _alert(**labels: str) -> dict[str, Any]:
    return {"labels": labels, "annotations": {"summary": "test"},
            "startsAt": datetime.now(UTC).isoformat()}


async def test_an_unreachable_site_mutes_its_camera_alerts_only(
        alertmanager: str, sink: tuple[Sink, int]) -> None:
    received, _ = sink
    async with aiohttp.ClientSession(alertmanager) as http:
        async def post(*alerts: dict[str, Any]) -> None:
            async with http.post("/api/v2/alerts", json=list(alerts)) as r:
                assert r.status == 200, await r.text()

        async def states() -> dict[tuple[str, str], dict[str, Any]]:
            async with http.get("/api/v2/alerts") as r:
                return {(a["labels"]["alertname"], a["labels"]["site"]): a["status"]
                        for a in await r.json()}

        await post(_alert(alertname="VigieSiteUnreachable", severity="critical", site="clg-a"))
        await _until(lambda: ("VigieSiteUnreachable", "clg-a") in received_states(received))
        # Camera alerts of the unreachable site and of another one, as Prometheus (and
        # vigie's own notifier) send them: with `site` and `camera`.
        await post(_alert(alertname="VigieCameraDown", severity="major", site="clg-a",
                          camera="entree"),
                   _alert(alertname="VigieCameraDown", severity="major", site="clg-b",
                          camera="entree"),
                   _alert(alertname="intrusion", severity="critical", site="clg-a",
                          source="centrale-a"))
        await _until(lambda: received.labels(alertname="VigieCameraDown", site="clg-b"))
        await _until(lambda: received.labels(alertname="intrusion", site="clg-a"))
        now = await states()
        assert now[("VigieCameraDown", "clg-a")]["state"] == "suppressed"
        assert now[("VigieCameraDown", "clg-a")]["inhibitedBy"]
        assert now[("VigieCameraDown", "clg-b")]["state"] == "active"
        assert now[("intrusion", "clg-a")]["state"] == "active"  # not a camera alert
        await asyncio.sleep(3)  # several group intervals: the muted one stays muted
        assert not received.labels(alertname="VigieCameraDown", site="clg-a")
        # Each went to its receiver: critical ones to the room's critical hook.
        paths = {(labels["alertname"], labels["site"]): path
                 for path, labels in received.received}
        assert paths[("VigieSiteUnreachable", "clg-a")] == "/alerts/critical"
        assert paths[("intrusion", "clg-a")] == "/alerts/critical"
        assert paths[("VigieCameraDown", "clg-b")] == "/alerts"


async def test_a_node_fault_mutes_the_alerts_it_explains_on_that_node_only(
        alertmanager: str, sink: tuple[Sink, int]) -> None:
    received, _ = sink
    async with aiohttp.ClientSession(alertmanager) as http:
        async def post(*alerts: dict[str, Any]) -> None:
            async with http.post("/api/v2/alerts", json=list(alerts)) as r:
                assert r.status == 200, await r.text()

        await post(_alert(alertname="VigieDatabaseDown", severity="critical", instance="n1"),
                   _alert(alertname="VigieCameraWorkerDown", severity="major", instance="n1",
                          worker="1"))
        await _until(lambda: received.labels(alertname="VigieCameraWorkerDown"))
        await post(*(_alert(alertname=name, severity="major", instance=node)
                     for name in ("VigieSpoolGrowing", "VigieCamerasStale")
                     for node in ("n1", "n2")),
                   _alert(alertname="VigieSpoolFull", severity="critical", instance="n1"))
        await _until(lambda: received.labels(alertname="VigieSpoolFull"))
        await _until(lambda: len(received.labels(instance="n2")) == 2)
        async with http.get("/api/v2/alerts") as r:
            now = {(a["labels"]["alertname"], a["labels"]["instance"]): a["status"]["state"]
                   for a in await r.json()}
    assert now[("VigieSpoolGrowing", "n1")] == now[("VigieCamerasStale", "n1")] == "suppressed"
    assert now[("VigieSpoolGrowing", "n2")] == now[("VigieCamerasStale", "n2")] == "active"
    assert now[("VigieSpoolFull", "n1")] == "active"
    assert {path for path, _ in received.received} == {"/ops"}


def received_states(sink: Sink) -> set[tuple[str, str]]:
    return {(labels["alertname"], labels["site"]) for _, labels in sink.received}


async def _until(check: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.1)
