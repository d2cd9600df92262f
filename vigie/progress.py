"""Progress of long work on the terminal (migrations, calendar import, reference learning):
one line redrawn in place on a terminal, plain lines elsewhere (a log file, CI)."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """`with Progress("migrations", total=12) as p: ... p.advance(note="0007_feed")`"""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 min_interval: float = 0.1, plain_every: float = 10.0) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._min_interval = min_interval
        self._plain_every = plain_every
        self._written_at = time.monotonic()
        self._drawn_at = 0.0
        self._started = time.monotonic()

    def __enter__(self) -> Progress:
        if self.tty:
            self._draw("")
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self.close("failed" if kind is not None else "")

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        now = time.monotonic()
        if not self.tty:
            self.stream.write(f"{self.label}: {self._count()}{' ' + note if note else ''}\n")
            self.stream.flush()
        elif now - self._drawn_at >= self._min_interval or self.done == self.total:
            self._draw(note)

    def update(self, done: int, note: str = "") -> None:
        """Work measured rather than counted (cameras learned so far, polled): `done` so far.
        Off a terminal, a line when it moves and otherwise one every `plain_every` seconds,
        so that a log shows the work is alive without a line per poll."""
        now = time.monotonic()
        if done != self.done or self.tty or now - self._written_at >= self._plain_every:
            self._written_at = now
            self.advance(done - self.done, note)

    def close(self, note: str = "") -> None:
        elapsed = time.monotonic() - self._started
        if self.tty:
            self._draw(note or f"done in {elapsed:.1f}s")
            self.stream.write("\n")
            self.stream.flush()

    def _count(self) -> str:
        return f"{self.done}/{self.total}" if self.total else str(self.done)

    def _draw(self, note: str) -> None:
        self._drawn_at = time.monotonic()
        width = shutil.get_terminal_size((80, 20)).columns
        bar = ""
        if self.total:
            cells = 24
            filled = round(cells * self.done / self.total)
            bar = f" [{'#' * filled}{'.' * (cells - filled)}] {100 * self.done // self.total:3d}%"
        line = f"{self.label}{bar} {self._count()} {note}".rstrip()
        self.stream.write("\r\x1b[K" + line[: width - 1])
        self.stream.flush()
