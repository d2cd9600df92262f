"""Operations: request ids and alert ids in JSON logs, progress of long work (migrations,
calendar import), shell completion generated from the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import eventually, make_config
from tests.deploy.live import Publisher, make_token
from vigie.app import Node, running_node
from vigie.logs import RequestIdFilter, _JsonLines
from vigie.progress import Progress

VIGIE = str(Path(sys.executable).with_name("vigie"))


# --- request ids and alert ids in JSON logs ------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger as `vigie run --json-logs` sets it up, into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(_JsonLines())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(old_level)


def _lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.fixture
async def node(fresh_dsn: str, mqtt_url: str) -> AsyncIterator[Node]:
    async with running_node(make_config(fresh_dsn, mqtt_url)) as node:
        assert node.subscriber is not None and await node.subscriber.wait_connected(5)
        yield node


async def test_request_ids_and_alert_ids_in_json_logs(node: Node, json_log: io.StringIO
                                                      ) -> None:
    publisher = Publisher(node)
    try:
        await asyncio.to_thread(publisher.event, "clg-jean-moulin", "panique-accueil", "panic",
                                "alarm")
    finally:
        await asyncio.to_thread(publisher.close)

    def opened() -> list[dict[str, object]]:
        return [e for e in _lines(json_log) if e.get("alert_action") == "opened"]

    async def found() -> list[dict[str, object]]:
        return opened()

    [entry] = await eventually(found)
    alert_id = str(entry["alert_id"])
    assert entry["severity"] == "critical" and "request_id" not in entry

    token = await make_token(node, "operator")
    headers = {"Authorization": f"Bearer {token}", "X-Request-Id": "csu-poste-3.42"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{node.api_url}/api/v1/alerts/{alert_id}/ack", headers=headers,
                             json={"comment": "vu"}) as r:
            assert r.status == 200
            assert r.headers["X-Request-Id"] == "csu-poste-3.42"
        # Without one (or with one that is not sane), the node makes one up.
        async with http.get(f"{node.api_url}/healthz",
                            headers={"X-Request-Id": "bad id; <script>"}) as r:
            made = r.headers["X-Request-Id"]
            assert len(made) == 16 and made.isalnum()
        async with http.get(f"{node.api_url}/no-such-page") as r:
            assert r.status == 404 and r.headers["X-Request-Id"]

    in_request = [e for e in _lines(json_log) if e.get("request_id") == "csu-poste-3.42"]
    assert {e.get("alert_action") for e in in_request} >= {"acknowledged"}
    request_line = [e for e in in_request if e.get("route") == "/api/v1/alerts/{alert_id}/ack"]
    assert request_line and request_line[0]["alert_id"] == alert_id
    assert request_line[0]["status"] == 200
    assert all(e["alert_id"] == alert_id for e in in_request if "alert_id" in e)
    assert token not in json_log.getvalue()


# --- progress -----------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_and_in_a_log() -> None:
    tty = _Terminal()
    with Progress("migrations", total=4, stream=tty, min_interval=0) as p:
        for i in range(4):
            p.advance(note=f"step {i}")
    screen = tty.getvalue()
    assert "\r\x1b[K" in screen and "[" + "#" * 24 + "] 100% 4/4" in screen
    assert screen.endswith("\n") and screen.count("\n") == 1  # one line, redrawn
    assert "[" + "#" * 12 + "." * 12 + "]  50% 2/4 step 1" in screen

    log = io.StringIO()
    with Progress("migrations", total=2, stream=log) as p:
        p.advance(note="0001_init")
        p.advance(note="0002_feed")
    assert log.getvalue() == "migrations: 1/2 0001_init\nmigrations: 2/2 0002_feed\n"


def test_progress_of_polled_work_in_a_log_is_a_line_per_change() -> None:
    # Cameras learned, polled every second: a log gets a line when the count moves, and
    # otherwise one every `plain_every` seconds (0 here: each poll), not one per poll.
    log = io.StringIO()
    with Progress("clg: references", total=3, stream=log, plain_every=3600) as p:
        for done in (0, 0, 1, 1, 3):
            p.update(done, note="learning")
    assert log.getvalue().splitlines() == ["clg: references: 1/3 learning",
                                           "clg: references: 3/3 learning"]
    log = io.StringIO()
    with Progress("clg: references", total=3, stream=log, plain_every=0) as p:
        p.update(0, note="2 learning (40 %)")
        p.update(0, note="2 learning (60 %)")
    assert log.getvalue().splitlines() == ["clg: references: 0/3 2 learning (40 %)",
                                           "clg: references: 0/3 2 learning (60 %)"]
    tty = _Terminal()
    with Progress("clg: references", total=2, stream=tty, min_interval=0) as p:
        p.update(1, note="1 learning (50 %)")
    assert "]  50% 1/2 1 learning (50 %)" in tty.getvalue()


def test_progress_says_when_the_work_failed() -> None:
    tty = _Terminal()
    with pytest.raises(RuntimeError), Progress("import", total=3, stream=tty) as p:
        p.advance()
        raise RuntimeError("boom")
    assert "failed" in tty.getvalue() and "done in" not in tty.getvalue()


def test_vigie_migrate_shows_its_progress(fresh_dsn: str, tmp_path: Path) -> None:
    config = tmp_path / "vigie.yaml"
    config.write_text(yaml.safe_dump({"node": {"name": "t", "data_dir": str(tmp_path)},
                                      "database": {"dsn": fresh_dsn}}))
    migrations = sorted(p.name for p in (Path(__file__).parents[2] / "vigie" / "store" /
                                         "migrations").glob("*.sql"))
    result = subprocess.run([VIGIE, "migrate", "--config", str(config)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    steps = [ln for ln in result.stderr.splitlines() if ln.startswith("migrations: ")]
    assert steps == [f"migrations: {i}/{len(migrations)} {name.removesuffix('.sql')}"
                     for i, name in enumerate(migrations, 1)]
    assert result.stdout.strip() == f"database schema at version {int(migrations[-1][:4])}"
    again = subprocess.run([VIGIE, "migrate", "--config", str(config)], capture_output=True,
                           text=True, timeout=120, check=False)
    assert again.returncode == 0 and "migrations: " not in again.stderr


# --- shell completion ---------------------------------------------------------------------


def _complete(script: str, line: str) -> list[str]:
    """What bash's completion offers for `line` (the cursor at its end)."""
    program = f"""
source /dev/stdin <<'VIGIE_COMPLETION'
{script}
VIGIE_COMPLETION
read -ra COMP_WORDS <<< {json.dumps(line)}
[[ {json.dumps(line)} == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))
_vigie
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _script(shell: str) -> str:
    result = subprocess.run([VIGIE, "completion", shell], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bash_completion() -> None:
    if shutil.which("bash") is None:
        pytest.skip("not run: bash is not installed")
    script = _script("bash")
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
    assert _complete(script, "vigie st") == ["status"]
    assert set(_complete(script, "vigie ")) >= {"run", "migrate", "check-config", "token",
                                                 "calendar", "demo", "status", "completion"}
    assert _complete(script, "vigie token ")[:3] == ["create", "list", "revoke"]
    assert _complete(script, "vigie token create --role ") == [
        "admin", "operator", "technician", "viewer"]
    assert "--token" in _complete(script, "vigie status --")
    assert _complete(script, "vigie cameras ")[0] == "relearn"
    assert {"--site", "--camera", "--wait", "--timeout", "--url", "--token"} <= set(
        _complete(script, "vigie cameras relearn --"))
    assert _complete(script, "vigie completion ")[:3] == ["bash", "zsh", "fish"]
    # A value that happens to be a command's name does not derail it.
    assert _complete(script, "vigie token create --name list --ro") == ["--role"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_other_shells(shell: str) -> None:
    script = _script(shell)
    assert "vigie" in script and "status" in script
    if shutil.which(shell) is None:
        pytest.skip(f"not run: {shell} is not installed here (script generated, not executed)")
    check = subprocess.run([shell, "-n"], input=script, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
