"""Drive the RTSP test server (`rtsp_server.py`) from the tests and the benchmarks.

The server runs under the system interpreter, which has GStreamer's Python bindings; this
module runs in the project's virtualenv and talks to it over JSON lines on its stdin/stdout.

    with RtspServer(log_path=Path("rtsp.log")) as server:
        url = server.add_live("entree")          # rtsp://127.0.0.1:PORT/live/entree
        server.fault("entree", "cover")
        server.fault("entree", "normal")
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.cameras import clips

__all__ = ["DEBIAN_PACKAGES", "GStreamerMissing", "RtspServer", "RtspServerError"]

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = os.environ.get("VIGIE_GST_PYTHON", "/usr/bin/python3")
DEBIAN_PACKAGES = (
    "python3-gi", "gir1.2-gst-rtsp-server-1.0", "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good", "gstreamer1.0-plugins-bad", "gstreamer1.0-plugins-ugly",
    "gstreamer1.0-libav", "gstreamer1.0-tools", "ffmpeg",
)
INSTALL_HINT = "apt-get install " + " ".join(DEBIAN_PACKAGES)


class RtspServerError(RuntimeError):
    """The server refused a command, did not answer, or is not running."""


class GStreamerMissing(RtspServerError):
    """The system interpreter cannot run the server: GStreamer or its bindings are missing."""


class RtspServer:
    """One RTSP test server process on 127.0.0.1 and the mounts added through it.

    Thread-safe: a test may inject a fault from a timer thread while it reads a stream.
    """

    def __init__(self, *, log_path: Path, python: str = SYSTEM_PYTHON, port: int = 0) -> None:
        self.log_path = log_path
        self.python = python
        self.port = port
        self.hang_port = 0
        self.pid = 0
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # What was added, so a restarted server serves the same mounts (without their faults).
        self._mounts: dict[str, tuple[str, str, dict[str, Any]]] = {}

    # -- lifetime -----------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        if not Path(self.python).exists():
            raise GStreamerMissing(f"{self.python} not found; {INSTALL_HINT}")
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.python, "-u", str(SERVER_SCRIPT), "--port", str(self.port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                bufsize=1)
        self._replies = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="rtsp-server-stdout",
                                        daemon=True)
        self._reader.start()
        try:
            ready = self._next_reply(timeout)
        except RtspServerError:
            self._reap()
            raise RtspServerError(f"the RTSP test server did not start in {timeout}s:\n"
                                  f"{self.stderr_tail()}") from None
        if ready is None or not ready.get("ready"):
            code = self._reap()
            detail = (ready or {}).get("error") or self.stderr_tail()
            raise GStreamerMissing(
                f"the RTSP test server did not start (exit code {code}): {detail}\n"
                f"It needs GStreamer's RTSP server for {self.python}: {INSTALL_HINT}")
        self.port, self.hang_port, self.pid = ready["port"], ready["hang_port"], ready["pid"]

    def stop(self, timeout: float = 10.0) -> int | None:
        """Ask the server to quit (closing its stdin), escalate if it does not; its exit code."""
        return self._reap(timeout)

    def restart(self) -> None:
        """A fresh process on the same port (if free), serving the same mounts."""
        self._reap()
        try:
            self.start()
        except RtspServerError:  # the port is not free yet: any port will do
            self.port = 0
            self.start()
        for kind, name, args in list(self._mounts.values()):
            self.command(f"add_{kind}", name=name, **args)

    def alive(self, timeout: float = 5.0) -> bool:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        try:
            self.command("status", timeout=timeout)
        except RtspServerError:
            # Its stdout closes a moment before it can be reaped: let `returncode` catch up.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
            return False
        return True

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _reap(self, timeout: float = 10.0) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.stdin is not None:
            with contextlib.suppress(OSError):  # already gone
                proc.stdin.close()  # EOF: the server quits
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            try:
                self._replies.put(json.loads(line))
            except json.JSONDecodeError:
                self._replies.put({"ok": False, "error": f"not JSON: {line!r}"})
        self._replies.put(None)  # the server's stdout closed: it is gone

    def _next_reply(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            raise RtspServerError(f"no answer from the RTSP test server in {timeout}s") from None

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- commands -----------------------------------------------------------------------------

    def command(self, cmd: str, /, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None or proc.poll() is not None:
                raise RtspServerError(f"the RTSP test server is not running ({cmd})")
            ident = next(self._ids)
            try:
                proc.stdin.write(json.dumps({"cmd": cmd, "id": ident, **args}) + "\n")
                proc.stdin.flush()
            except OSError as exc:
                raise RtspServerError(f"the RTSP test server is gone: {exc}") from exc
            while True:
                reply = self._next_reply(timeout)
                if reply is None:
                    self._replies.put(None)
                    raise RtspServerError(f"the RTSP test server exited during {cmd}")
                if reply.get("id") == ident:
                    break  # earlier replies belong to commands that timed out
        if not reply.get("ok"):
            raise RtspServerError(f"{cmd} {args}: {reply.get('error')}")
        return reply

    def url(self, mount: str, credentials: str | None = None) -> str:
        """`rtsp://[credentials@]127.0.0.1:PORT/<mount>`; a bare mount name finds its kind."""
        path = mount.strip("/")
        if "/" not in path and path in self._mounts:
            path = f"{self._mounts[path][0]}/{path}"
        userinfo = f"{credentials}@" if credentials else ""
        return f"rtsp://{userinfo}127.0.0.1:{self.port}/{path}"

    def hang_url(self, name: str = "camera") -> str:
        """A camera whose server accepts the TCP connection and never answers."""
        return f"rtsp://127.0.0.1:{self.hang_port}/hang/{name}"

    def add_clip(self, name: str, path: Path | str | None = None, codec: str = "h264") -> str:
        """Serve a pre-encoded clip at /clip/<name> (default: the cached test clip)."""
        path = Path(path) if path is not None else clips.clip(codec)
        args = {"path": str(path), "codec": codec}
        self.command("add_clip", name=name, **args)
        self._mounts[name] = ("clip", name, args)
        return self.url(f"clip/{name}")

    def add_live(self, name: str) -> str:
        """Serve a live test scene at /live/<name>; re-adding clears its faults."""
        self.command("add_live", name=name)
        self._mounts[name] = ("live", name, {})
        return self.url(f"live/{name}")

    def fault(self, name: str, kind: str, arg: Any = None) -> dict[str, Any]:
        """Inject a fault: stop, start, freeze, black, dark, bright, blur [sigma],
        cover [fraction], shift [[dx, dy]], fps N, stall, exposure [[gain, seconds]] (a
        slow drift of the light), pass [[width, seconds]] (an object crossing the view),
        normal (clears them all)."""
        return self.command("fault", name=name, kind=kind, arg=arg)

    def remove(self, name: str) -> None:
        self.command("remove", name=name)
        self._mounts.pop(name, None)

    def status(self) -> dict[str, Any]:
        return self.command("status")
