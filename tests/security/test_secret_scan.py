"""Distinctive secrets (a camera's password, the MQTT password, the database password) are
configured, every endpoint is called with every role, error paths are taken, every log line
at every level is kept (as vigie writes it, human and JSON), and the metrics, the CLI's
output, the database's contents and every answer are searched: the secrets are nowhere."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.api.test_api import BAD_QUERIES, _api_for, _fill_path, make_token
from tests.conftest import SITES, make_config
from tests.security.conftest import MQTT_PASSWORD, MQTT_USER, TlsBroker
from vigie.app import running_node
from vigie.errors import VigieError
from vigie.logs import _JsonLines, _Redacting
from vigie.store import Store

CAMERA_PASSWORD = "Cam-Pw-Narwhal-8841"
DB_PASSWORD = "Db-Pw-Okapi-3307"
SECRETS = (CAMERA_PASSWORD, MQTT_PASSWORD, DB_PASSWORD)
ROLES = ("admin", "operator", "technician", "viewer")


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every record, from every logger, at DEBUG, through vigie's own formatters."""
    out = io.StringIO()
    root = logging.getLogger()
    handlers = []
    for formatter in (_Redacting("%(asctime)s %(levelname)s %(name)s: %(message)s"),
                      _JsonLines()):
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        handler.setLevel(logging.DEBUG)
        handlers.append(handler)
        root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    yield out
    root.setLevel(level)
    for handler in handlers:
        root.removeHandler(handler)


def secret_sites() -> list[dict[str, Any]]:
    sites = [dict(s) for s in SITES]
    sites[0] = {**sites[0], "cameras": [
        {"id": "entree", "name": "Entrée", "zone": "entree",
         "url": f"rtsp://cam-admin:{CAMERA_PASSWORD}@127.0.0.1:9/entree?user=cam-admin"
                f"&password={CAMERA_PASSWORD}"},
        # Credentials percent-encoded in the URL, as some cameras need.
        {"id": "cour", "name": "Cour", "zone": "cour",
         "url": f"rtsp://cam-admin:{CAMERA_PASSWORD.replace('-', '%2D')}@127.0.0.1:9/cour"}]}
    return sites


async def test_secrets_appear_nowhere(fresh_dsn: str, tls_broker: TlsBroker,
                                      log_lines: io.StringIO, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []  # everything an outsider or an operator could read
    dsn = fresh_dsn.replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)  # trust: ignored
    certs = tls_broker.certs
    config = make_config(dsn, tls_broker.url, sites=secret_sites(), mqtt={
        "username": MQTT_USER, "password_file": str(tls_broker.password_file),
        "tls": {"ca_file": str(certs.ca), "cert_file": str(certs.client_cert),
                "key_file": str(certs.client_key)}})
    seen += [repr(config), str(config.model_dump()), config.model_dump_json()]
    async with running_node(config) as node, _api_for(node) as api:
        assert node.subscriber is not None and await node.subscriber.wait_connected(10)
        tokens = {role: await make_token(node, role) for role in ROLES}
        for method, path, _ in api.spec.operations():
            for token in tokens.values():
                url = await _fill_path(node, path)
                reply = await api.call(method, url, token, json={"comment": "scan"})
                seen += [str(reply.body), str(dict(reply.headers))]
        # Error paths: bad queries, bad tokens, unknown routes, bad bodies.
        for path in BAD_QUERIES.values():
            seen.append(str((await api.call("GET", path)).body))
        for auth in ("", "Bearer nope", f"Bearer {CAMERA_PASSWORD}", "Basic eA=="):
            seen.append(str((await api.call("GET", "/api/v1/cameras", auth=auth)).body))
        seen.append(str((await api.call("GET", f"/api/v1/{CAMERA_PASSWORD}")).body))
        seen.append(str((await api.call("POST", f"/api/v1/alerts/{uuid.uuid4()}/ack",
                                        data=b"{not json")).body))
        # The live feed.
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"{node.api_url}/api/v1/stream?token={tokens['viewer']}") as ws:
            seen.append(str(await ws.receive_json(timeout=5)))
        seen.append((await api.call("GET", "/metrics", auth="")).body)
        seen.append(str(node.readiness()))
        # What the database holds (camera URLs are stored redacted).
        async with node.store.connection() as conn:
            tables = [r["relname"] for r in await conn.fetch(
                "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') "
                "AND relnamespace = 'public'::regnamespace")]
            for table in tables:
                rows = await conn.fetch(f'SELECT row_to_json(t)::text AS j FROM "{table}" t')
                seen += [r["j"] for r in rows]
        cameras = (await api.get("/api/v1/cameras"))["items"]
        assert {c["url"] for c in cameras} == {"rtsp://***@127.0.0.1:9/entree",
                                               "rtsp://***@127.0.0.1:9/cour"}

    # An unreachable database: the error message names it without its password.
    with pytest.raises(VigieError) as caught:
        await Store.open(f"postgresql://vigie:{DB_PASSWORD}@127.0.0.1:9/vigie", timeout=2)
    seen.append(str(caught.value))

    # check-config, on a good file and on a broken one, with the secrets inline.
    raw = {"database": {"dsn": dsn}, "node": {"data_dir": str(tmp_path / "var")},
           "mqtt": {"url": "mqtt://127.0.0.1:1883", "username": MQTT_USER,
                    "password": MQTT_PASSWORD}, "sites": secret_sites()}
    text = yaml.safe_dump(raw, allow_unicode=True)
    files = {
        "good": text,
        # Wrong values around the secrets: URLs of the wrong scheme, a DSN that is not one.
        "invalid": text.replace("rtsp://", "http://").replace("postgresql://", "mysql://"),
        # Not YAML at all, on the very line of a secret.
        "not yaml": text + f"\nbroken: [{MQTT_PASSWORD}: {{\n",
    }
    for name, content in files.items():
        path = tmp_path / f"{name.replace(' ', '-')}.yaml"
        path.write_text(content)
        run = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "vigie.cli", "check-config", "--config",
                             str(path)], capture_output=True, text=True, timeout=60)
        assert (run.returncode == 0) == (name == "good"), (name, run.stdout, run.stderr)
        if name == "invalid":
            assert "sites[0].cameras[0].url" in run.stderr and "database.dsn" in run.stderr
        seen += [run.stdout, run.stderr]

    logs = log_lines.getvalue()
    # The node logged while the secrets were in use (and a leak would have been caught).
    assert "connected to MQTT broker" in logs and "watching 2 camera(s)" in logs
    seen.append(logs)
    seen.append(capsys.readouterr().err)
    # The node's own files (spools, the API token snapshot: hashes only).
    files_seen = [f.read_bytes().decode("utf-8", "replace")
                  for f in config.node.data_dir.rglob("*") if f.is_file()]
    assert (config.node.data_dir / "api-tokens.json").exists()
    seen += files_seen
    found = {s: [t[:200] for t in seen if s in t] for s in (*SECRETS, *tokens.values())}
    assert not any(found.values()), f"secrets leaked: {found}"
    # The check could fail: the secrets were really in use, and a leak would be seen.
    assert leaks(f"x{CAMERA_PASSWORD}x") and leaks(tls_broker.password_file.read_text())
    assert re.search("CERTIFICATE|cannot|offline|connected", logs)
