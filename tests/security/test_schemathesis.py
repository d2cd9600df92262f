"""Schemathesis against the served OpenAPI document, with a token of every role and with
none: no 5xx, every answer matches its declared schema, status and content type, invalid
input is refused, unsupported methods answer 405 with Allow, and authentication is never
ignored.

Left out: `positive_data_acceptance`, which expects every schema-valid request to succeed.
Some schema-valid strings are rightly refused: an opaque cursor that this API did not give
out (400), a comment holding NUL (PostgreSQL text cannot) or only blanks (422).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api.test_api import (
    JM,
    PASTEUR,
    T0,
    _camera_with_snapshot,
    add_events,
    make_token,
    open_alert,
)
from tests.conftest import make_config
from tests.pg import temporary_database
from vigie.app import Node, running_node

NO_MQTT = "mqtt://127.0.0.1:1"
ROLES = ["admin", "operator", "technician", "viewer", "no token"]
EXAMPLES = 25  # per operation and phase
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,"
          "negative_data_rejection,missing_required_header,unsupported_method,ignored_auth")


@pytest.fixture(scope="module")
async def node() -> AsyncIterator[Node]:
    # ignored_auth sends a bad token to every route: past the default throttle (20 a
    # minute) the answers would be 429s, not the 401s under test. The throttle has tests of
    # its own.
    async with temporary_database("vigie_st") as dsn, running_node(
        make_config(dsn, NO_MQTT, api={"listen": "127.0.0.1:0",
                                       "trusted_proxies": ["127.0.0.1/32"],
                                       "auth_failures_per_minute": 10_000}),
        with_mqtt=False,
    ) as node:
        for site in (JM, PASTEUR):
            await open_alert(node, site)
        await add_events(node, [(JM, "porte-hall", "door", "open", T0),
                                (PASTEUR, "centrale", "intrusion", "alarm", T0)])
        await _camera_with_snapshot(node)
        yield node


@pytest.mark.slow
# A hang guard, generous: CPU-bound fuzzing took 106 s of the default 120 under load.
@pytest.mark.timeout(400)
@pytest.mark.parametrize("role", ROLES)
async def test_schemathesis_finds_nothing(node: Node, role: str, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install -e .[test])")
    headers = ["-H", f"X-Forwarded-For: 198.51.100.{ROLES.index(role) + 1}"]
    if role != "no token":
        headers += ["-H", f"Authorization: Bearer {await make_token(node, role)}"]
    proc = await asyncio.create_subprocess_exec(
        exe, "run", f"{node.api_url}/api/v1/openapi.json", *headers,
        "--checks", CHECKS, "--max-examples", str(EXAMPLES), "--seed", "20261128",
        "--workers", "1", "--no-color", "--generation-database", "none",
        "--report-dir", str(tmp_path),
        # Its cache (.schemathesis/) goes to the test's own directory, not the work tree.
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    generated = re.search(r"(\d+) generated", text)
    print(f"\nschemathesis as {role}: {generated.group(0) if generated else '?'}; "
          f"exit {proc.returncode}")
    assert proc.returncode == 0, text[-6000:]
    assert generated is not None and int(generated.group(1)) > 100, text[-2000:]
