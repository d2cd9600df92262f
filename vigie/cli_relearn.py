"""`vigie cameras relearn`: re-learn the reference picture of a site's cameras after a planned
change, through a running node's API, and with `--wait` follow the learning to its end.

Exit status: 0 every camera asked has learned (or, without --wait, the request was taken);
1 some have not (still learning at the timeout, offline, or watched by another node);
2 the node unreachable, the token refused or the request refused.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import aiohttp

from vigie.progress import Progress

__all__ = ["LearningRound", "run_relearn"]

POLL_EVERY = 1.0


class RelearnError(Exception):
    """The request could not be made or was refused: the message says why."""


@dataclass
class LearningRound:
    """The cameras of one request and where their new reference stands."""

    site: str
    requested_at: datetime
    cameras: list[str]
    elsewhere: list[str] = field(default_factory=list)  # watched by another node
    views: dict[str, dict[str, Any]] = field(default_factory=dict)  # last camera views

    def learned(self, camera: str) -> bool:
        ref = self.views.get(camera, {}).get("reference") or {}
        # A reference learned before the request is the one being replaced.
        return (ref.get("status") == "learned"
                and datetime.fromisoformat(ref["learned_at"]) >= self.requested_at)

    def offline(self, camera: str) -> bool:
        return self.views.get(camera, {}).get("state") == "offline"

    def progress(self, camera: str) -> float:
        ref = self.views.get(camera, {}).get("reference") or {}
        return float(ref.get("progress") or 0.0)

    def why_not(self, camera: str) -> str:
        """What holds a camera's learning back, if its view says: only good picture is
        learned from, so a black, covered or frozen camera makes no progress."""
        view = self.views.get(camera, {})
        if view.get("state") in (None, "ok"):
            return ""
        reasons = ",".join(view.get("reasons") or [])
        return f" ({view['state']}{': ' + reasons if reasons else ''})"

    def groups(self) -> tuple[list[str], list[str], list[str]]:
        """(learned, still learning, offline: cannot learn until it is back)."""
        learned = [c for c in self.cameras if self.learned(c)]
        offline = [c for c in self.cameras if not self.learned(c) and self.offline(c)]
        learning = [c for c in self.cameras if c not in learned and c not in offline]
        return learned, learning, offline

    @property
    def settled(self) -> bool:
        """Nothing left to wait for: each camera learned, or offline."""
        return not self.groups()[1]


def _error(status: int, body: Any) -> str:
    try:
        return str(body["error"]["message"])
    except (KeyError, TypeError):
        return f"HTTP {status}"


async def _request(http: aiohttp.ClientSession, site: str, cameras: list[str]
                   ) -> LearningRound:
    body = {"cameras": cameras} if cameras else None
    path = f"/api/v1/sites/{urllib.parse.quote(site, safe='')}/cameras/reference"
    async with http.post(path, json=body) as r:
        answer = await r.json(content_type=None)
        if r.status != 202:
            raise RelearnError(f"refused ({r.status}): {_error(r.status, answer)}")
    items = answer["items"]
    return LearningRound(
        site=site, requested_at=datetime.fromisoformat(answer["requested_at"]),
        cameras=[i["camera"] for i in items if i["relearn"] == "learning"],
        elsewhere=[i["camera"] for i in items if i["relearn"] != "learning"])


async def _poll(http: aiohttp.ClientSession, round_: LearningRound) -> None:
    async with http.get("/api/v1/cameras", params={"site": round_.site}) as r:
        if r.status != 200:
            raise RelearnError(f"cameras not read ({r.status}): "
                               f"{_error(r.status, await r.json(content_type=None))}")
        views = (await r.json())["items"]
    round_.views = {v["id"]: v for v in views if v["id"] in round_.cameras}


def _note(round_: LearningRound) -> str:
    _, learning, offline = round_.groups()
    parts = []
    if learning:
        mean = sum(round_.progress(c) for c in learning) / len(learning)
        parts.append(f"{len(learning)} learning ({100 * mean:.0f} %)")
    if offline:
        parts.append(f"{len(offline)} offline")
    return ", ".join(parts)


async def _follow(http: aiohttp.ClientSession, round_: LearningRound, timeout: float,
                  stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
    deadline = clock() + timeout
    with Progress(f"{round_.site}: references", total=len(round_.cameras),
                  stream=stream) as progress:
        while True:
            await _poll(http, round_)
            progress.update(len(round_.groups()[0]), _note(round_))
            if round_.settled or clock() >= deadline:
                break
            await asyncio.sleep(POLL_EVERY)


def render_summary(round_: LearningRound, out: TextIO, waited: bool) -> None:
    w = out.write
    learned, learning, offline = round_.groups()
    total = len(round_.cameras) + len(round_.elsewhere)
    if not waited:
        w(f"{round_.site}: re-learning the reference of {len(round_.cameras)} camera(s)"
          f" (follow with --wait, or GET /api/v1/cameras?site={round_.site})\n")
    else:
        w(f"{round_.site}: {total} camera(s) — {len(learned)} learned, {len(learning)} still "
          f"learning, {len(offline)} offline\n")
        if learned:
            w(f"  learned:        {', '.join(learned)}\n")
        if learning:
            w("  still learning: " + ", ".join(
                f"{c} {100 * round_.progress(c):.0f} %{round_.why_not(c)}" for c in learning)
              + "\n")
        if offline:
            w(f"  offline:        {', '.join(offline)} (cannot learn: will once back)\n")
    if round_.elsewhere:
        w(f"  not re-learned: {', '.join(round_.elsewhere)} (watched by another node: "
          "ask that node)\n")


async def relearn(url: str, token: str, site: str, cameras: list[str], wait: bool,
                  timeout: float, out: TextIO, progress: TextIO) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    client_timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(url.rstrip("/"), headers=headers,
                                     timeout=client_timeout) as http:
        round_ = await _request(http, site, cameras)
        if wait and round_.cameras:
            await _follow(http, round_, timeout, progress)
    render_summary(round_, out, wait)
    if not wait:
        return 1 if round_.elsewhere else 0
    return 0 if len(round_.groups()[0]) == len(round_.cameras) and not round_.elsewhere else 1


def run_relearn(url: str, token: str | None, site: str, cameras: list[str], wait: bool,
                timeout: float, out: TextIO = sys.stdout, progress: TextIO = sys.stderr
                ) -> int:
    token = token or os.environ.get("VIGIE_TOKEN")
    if not token:
        print("vigie: a technician or admin token is needed (--token or $VIGIE_TOKEN)",
              file=sys.stderr)
        return 2
    try:
        return asyncio.run(relearn(url, token, site, cameras, wait, timeout, out, progress))
    except RelearnError as exc:
        print(f"vigie: {site}: {exc}", file=sys.stderr)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"vigie: {url} unreachable: {type(exc).__name__}: {exc}".rstrip(": "),
              file=sys.stderr)
    return 2
