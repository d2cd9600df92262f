#!/usr/bin/python3
"""RTSP test cameras for vigie's tests and benchmarks, on GStreamer's gst-rtsp-server.

Run by the SYSTEM interpreter (Debian's python3-gi), not the project's virtualenv:

    /usr/bin/python3 tests/cameras/rtsp_server.py --port 0 [--hang-port 0]

It listens on 127.0.0.1 only, prints one line `{"ready": true, "port": N, "hang_port": M,
"pid": P}` when listening (or `{"ready": false, "error": "..."}` and exits 2 when GStreamer is
missing something), then reads JSON-lines commands on stdin and answers each with one JSON line
on stdout: `{"ok": true, ...}` or `{"ok": false, "error": "..."}` (an `"id"` in the command is
echoed back). stdout carries nothing else; GStreamer's own messages go to stderr.

Commands (`{"cmd": ...}`):

    status                         mounts, client counts, this process's CPU seconds
    add_clip  name path [codec]    /clip/<name>: a pre-encoded MP4 (codec h264 | h265), no encoder
    add_live  name                 /live/<name>: a live test scene encoded per client, with faults
    fault     name kind [arg]      inject a fault (see FAULTS); `normal` removes every fault
    remove    name                 unmount and disconnect its clients
    quit                           exit (so do SIGTERM, SIGINT and EOF on stdin)

Faults (`{"cmd": "fault", "name": N, "kind": K, "arg": A}`); picture faults need a live mount and
add up (black, dark and bright are one light setting: the last one wins):

    stop            unmount (new clients get 404) and close the connections of its clients
    start           mount again
    freeze          packets keep flowing at 10 fps, the decoded picture never changes
    black           Y = 16 everywhere          dark     mean Y ~ 24, texture still there
    bright          mean Y ~ 210               blur [sigma, default 2]   gaussian defocus
    cover [fraction, default 0.85]             a flat grey layer over the right part
    shift [[dx, dy], default [128, 72]]        the scene moves right/down (camera turned)
    fps N           frames dropped down to N per second (same caps, same encoder)
    stall           connection open, no RTP at all (no packet for `offline_after`)
    exposure [[gain, seconds], default [0.5, 10]]
                    the light drifts smoothly, from where it is, to `gain` times the normal
                    light over `seconds` (daylight, a cloud, dusk); `[1, S]` back to normal.
                    No fault for a camera: what its checks must tolerate
    pass [[width, seconds], default [0.3, 2]]
                    an object (a flat dark shape `width` of the view wide, nearly as tall as
                    it) crosses the view from left to right in `seconds`, then is gone
    normal          every fault removed (and the mount started again)

`add_*` are idempotent: re-adding a live camera clears its faults and restarts it (its clients
stay connected); re-adding a clip re-points it (its clients are disconnected).

Two traps of gst-rtsp-server 1.22 shape this server: a shared media aborts the process
(`gst_rtsp_media_get_rates: assertion failed`) when many clients come and go, and a shared media
on a file refuses new clients once its first client has left. So every mount builds one media
per client (`set_shared(False)`), and a live camera's faults are applied to every media it has
built so far and to each new one.

A raw TCP listener on `hang_port` accepts connections and never answers: the camera whose
RTSP server hangs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
except (ImportError, ValueError) as exc:
    sys.stdout.write(json.dumps({"ready": False, "error": f"{exc}: this script needs "
                                 "python3-gi and gir1.2-gst-rtsp-server-1.0"}) + "\n")
    sys.exit(2)
# PyGObject wants the version pins above before these imports.
from gi.repository import GLib, Gst, GstRtspServer

WIDTH, HEIGHT, FPS = 640, 360, 10
AYUV = f"video/x-raw,format=AYUV,width={WIDTH},height={HEIGHT},framerate={FPS}/1"
# A fault with no argument takes these.
DEFAULT_BLUR_SIGMA = 2.0
DEFAULT_COVER_FRACTION = 0.85
DEFAULT_SHIFT = (128, 72)
# (brightness, contrast) of videobalance; Y' = (Y - 16) * contrast + 16 + brightness * 255.
EXPOSURES = {"dark": (-0.02, 0.12), "bright": (0.62, 0.35)}
PICTURE_FAULTS = ("freeze", "black", "dark", "bright", "blur", "cover", "shift", "fps", "stall",
                  "exposure", "pass")
DEFAULT_EXPOSURE = (0.5, 10.0)  # (gain, seconds)
DEFAULT_PASS = (0.3, 2.0)  # (width as a share of the view, seconds)
ANIMATE_EVERY_MS = 50  # drifts and passing objects are moved this often, on the main loop
FAULTS = ("stop", "start", "normal", *PICTURE_FAULTS)
MOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

# Elements and the Debian package each comes from, checked before anything is served.
REQUIRED = {
    "filesrc": "gstreamer1.0-plugins-base (core)", "qtdemux": "gstreamer1.0-plugins-good",
    "h264parse": "gstreamer1.0-plugins-bad", "h265parse": "gstreamer1.0-plugins-bad",
    "rtph264pay": "gstreamer1.0-plugins-good", "rtph265pay": "gstreamer1.0-plugins-good",
    "videotestsrc": "gstreamer1.0-plugins-base", "compositor": "gstreamer1.0-plugins-base",
    "videobox": "gstreamer1.0-plugins-good", "gaussianblur": "gstreamer1.0-plugins-bad",
    "valve": "gstreamer1.0-plugins-core", "videobalance": "gstreamer1.0-plugins-good",
    "videoconvert": "gstreamer1.0-plugins-base", "x264enc": "gstreamer1.0-plugins-ugly",
}

CLIP_PIPELINES = {
    "h264": "qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1",
    "h265": "qtdemux ! h265parse ! rtph265pay name=pay0 pt=96 config-interval=-1",
}


def live_pipeline() -> str:
    """The scene a live camera films, then the camera's faults, then its encoder.

    scene: SMPTE bars under fine concentric rings (texture and sharp edges everywhere, no
    periodicity, so blur, cover and shift are measurable), a small ball moving and faint
    per-frame noise (so consecutive pictures always differ a little, like a real sensor).
    Each fault is an element whose properties change while playing (exposure and pass from
    a timer of the main loop, every ANIMATE_EVERY_MS):
      shift  videobox      (scene displaced: the camera turned)
      blur   gaussianblur  (defocus)
      freeze valve         (drops the scene; the compositor below repeats its last picture)
      cover  a flat grey layer of the camera compositor, over the right part of the view
      black  the scene layer made transparent over the black background (Y = 16)
      dark/bright          videobalance (brightness, contrast)
      exposure             videobalance too: its contrast times the drifting gain
      pass   a flat dark layer of the camera compositor, its position moving
      fps    a pad probe that drops frames (no caps change, the encoder never renegotiates)
      stall  valve after the encoder (connection open, no packets)
    """
    return " ".join([
        "compositor name=scene background=black",
        "  sink_0::zorder=0 sink_1::zorder=1 sink_1::alpha=0.3",
        "  sink_2::zorder=2 sink_2::xpos=232 sink_2::ypos=120",
        "  sink_3::zorder=3 sink_3::alpha=0.07",
        f"! {AYUV} ! videobox name=shift ! gaussianblur name=blur sigma=0",
        "! valve name=freeze drop-mode=forward-sticky-events ! camera.sink_1",
        f"videotestsrc is-live=true pattern=smpte ! {AYUV} ! scene.sink_0",
        f"videotestsrc is-live=true pattern=circular ! {AYUV} ! scene.sink_1",
        "videotestsrc is-live=true pattern=ball motion=wavy background-color=0x00000000",
        f"  ! video/x-raw,format=AYUV,width=176,height=120,framerate={FPS}/1 ! scene.sink_2",
        f"videotestsrc is-live=true pattern=snow ! {AYUV} ! scene.sink_3",
        # The camera: a live black background keeps the output ticking when the scene is
        # frozen (the compositor repeats a pad's last buffer); the cover layer sits on top.
        "compositor name=camera background=black",
        "  sink_0::zorder=0 sink_1::zorder=1 sink_2::zorder=2 sink_2::alpha=0",
        "  sink_3::zorder=3 sink_3::alpha=0",
        f"! {AYUV} ! videobalance name=exposure ! identity name=rate",
        "! videoconvert ! video/x-raw,format=I420",
        # A constant quantizer, not a bitrate: an unchanged picture then encodes to exactly the
        # same decoded frame (a bitrate target keeps refining it, and "frozen" would flicker).
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 threads=1",
        "  pass=quant quantizer=28",
        "! valve name=stall drop-mode=forward-sticky-events",
        "! rtph264pay name=pay0 pt=96 config-interval=-1",
        f"videotestsrc is-live=true pattern=black ! {AYUV} ! camera.sink_0",
        "videotestsrc name=cover is-live=true pattern=solid-color foreground-color=0xff505050",
        f"  ! video/x-raw,format=AYUV,width={WIDTH},height={HEIGHT},framerate={FPS}/1",
        "  ! camera.sink_2",
        # Someone walking past, close to the lens: under the same light as the scene.
        "videotestsrc is-live=true pattern=solid-color foreground-color=0xff483c30",
        f"  ! video/x-raw,format=AYUV,width={WIDTH},height={HEIGHT},framerate={FPS}/1",
        "  ! camera.sink_3",
    ])


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class CommandError(Exception):
    """A command the server refuses; its message goes back to the caller."""


class Mount:
    """One mount point, and the medias (one per client) it has built and not yet released."""

    kind = ""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopped = False
        self.medias: set[GstRtspServer.RTSPMedia] = set()
        self.lock = threading.Lock()  # medias are released from the media threads
        self.factory = GstRtspServer.RTSPMediaFactory()
        # One media per client: see the module docstring for why never shared.
        self.factory.set_shared(False)
        self.factory.connect("media-configure", self._on_media_configure)

    @property
    def path(self) -> str:
        return f"/{self.kind}/{self.name}"

    def _on_media_configure(self, _factory: Any, media: GstRtspServer.RTSPMedia) -> None:
        with self.lock:
            self.medias.add(media)
        media.connect("unprepared", self._on_media_unprepared)
        self.configure(media)

    def _on_media_unprepared(self, media: GstRtspServer.RTSPMedia) -> None:
        with self.lock:
            self.medias.discard(media)

    def configure(self, media: GstRtspServer.RTSPMedia) -> None:
        """Bring a new media in line with the mount's current state."""

    def live_medias(self) -> list[GstRtspServer.RTSPMedia]:
        with self.lock:
            return list(self.medias)

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "stopped": self.stopped,
                "clients": len(self.live_medias())}


class ClipMount(Mount):
    kind = "clip"

    def __init__(self, name: str, path: str, codec: str) -> None:
        super().__init__(name)
        self.file = path
        self.codec = codec
        # No encoder in the server: a reader of a clip costs ~0.2 % of a core (100 readers).
        self.factory.set_launch(f'( filesrc location="{path}" ! {CLIP_PIPELINES[codec]} )')

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"codec": self.codec, "file": self.file}


class LiveMount(Mount):
    kind = "live"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.codec = "h264"
        self.faults: dict[str, Any] = {}
        self.factory.set_launch(f"( {live_pipeline()} )")
        self.gain = 1.0  # the light now, as a share of the normal light
        self._drift: tuple[float, float, float, float] | None = None  # from, to, t0, seconds
        self._passing: tuple[float, float, float] | None = None  # width, t0, seconds
        self._timer: int | None = None

    def configure(self, media: GstRtspServer.RTSPMedia) -> None:
        bin_ = media.get_element()
        rate = bin_.get_by_name("rate")
        state = {"next": None}
        # The probe goes away with the media's elements.
        rate.get_static_pad("src").add_probe(
            Gst.PadProbeType.BUFFER, self._drop_for_fps, state)
        self._apply(bin_)

    def _drop_for_fps(self, _pad: Gst.Pad, info: Gst.PadProbeInfo,
                      state: dict[str, Any]) -> Gst.PadProbeReturn:
        fps = self.faults.get("fps")
        if not fps:
            state["next"] = None
            return Gst.PadProbeReturn.OK
        pts = info.get_buffer().pts
        if pts == Gst.CLOCK_TIME_NONE:
            return Gst.PadProbeReturn.OK
        if state["next"] is not None and pts < state["next"]:
            return Gst.PadProbeReturn.DROP
        # Keep this frame; the next one kept is at least 1/fps later (10 % slack for jitter).
        state["next"] = pts + int(Gst.SECOND * 0.9 / fps)
        return Gst.PadProbeReturn.OK

    def _apply(self, bin_: Gst.Bin) -> None:
        f = self.faults
        self._apply_light(bin_)
        self._apply_passing(bin_)
        bin_.get_by_name("blur").set_property("sigma", float(f.get("blur", 0.0)))
        dx, dy = f.get("shift", (0, 0))
        shift = bin_.get_by_name("shift")
        # Negative = add a border: content moves right by dx, down by dy; size unchanged.
        shift.set_property("left", -dx)
        shift.set_property("right", dx)
        shift.set_property("top", -dy)
        shift.set_property("bottom", dy)
        bin_.get_by_name("freeze").set_property("drop", bool(f.get("freeze")))
        bin_.get_by_name("stall").set_property("drop", bool(f.get("stall")))
        camera = bin_.get_by_name("camera")
        # Black is the compositor's black background (Y = 16), not a crushed picture.
        scene_alpha = 0.0 if f.get("light") == "black" else 1.0
        camera.get_static_pad("sink_1").set_property("alpha", scene_alpha)
        pad = camera.get_static_pad("sink_2")
        fraction = float(f.get("cover", 0.0))
        covered = round(WIDTH * fraction)
        pad.set_property("alpha", 1.0 if fraction else 0.0)
        pad.set_property("xpos", WIDTH - covered)
        pad.set_property("width", max(covered, 1))

    def _apply_light(self, bin_: Gst.Bin) -> None:
        brightness, contrast = EXPOSURES.get(self.faults.get("light", ""), (0.0, 1.0))
        exposure = bin_.get_by_name("exposure")
        # Y' = (Y - 16) * contrast + 16 + brightness * 255: the gain scales the light above
        # black, as a sensor's exposure does.
        exposure.set_property("brightness", brightness * self.gain)
        exposure.set_property("contrast", contrast * self.gain)

    def _apply_passing(self, bin_: Gst.Bin) -> None:
        pad = bin_.get_by_name("camera").get_static_pad("sink_3")
        if self._passing is None:
            pad.set_property("alpha", 0.0)
            return
        share, started, seconds = self._passing
        width = max(1, round(WIDTH * share))
        progress = min(1.0, (time.monotonic() - started) / seconds)
        pad.set_property("alpha", 1.0)
        pad.set_property("width", width)
        pad.set_property("height", HEIGHT - 30)
        pad.set_property("ypos", 15)
        pad.set_property("xpos", round(-width + progress * (WIDTH + width)))

    def _animate(self) -> bool:
        """One step of the light's drift and of the passing object; False when both are
        done (the timer stops)."""
        now = time.monotonic()
        if self._drift is not None:
            start, end, t0, seconds = self._drift
            progress = 1.0 if seconds <= 0 else min(1.0, (now - t0) / seconds)
            # Eased at both ends, as daylight changes: no step a frame-to-frame check sees.
            self.gain = start + (end - start) * (1 - math.cos(math.pi * progress)) / 2
            if progress >= 1.0:
                self._drift = None
                if end == 1.0:
                    self.faults.pop("exposure", None)  # back to the normal light
        if self._passing is not None and now - self._passing[1] > self._passing[2]:
            self._passing = None
            self.faults.pop("pass", None)
        for media in self.live_medias():
            bin_ = media.get_element()
            self._apply_light(bin_)
            self._apply_passing(bin_)
        if self._drift is None and self._passing is None:
            self._timer = None
            return False
        return True

    def _set_change(self, kind: str, arg: Any) -> None:
        """A change that takes time: the light drifting, an object passing."""
        if kind == "exposure":
            gain, seconds = pair(arg, DEFAULT_EXPOSURE, (0.05, 2.0), (0.0, 3600.0))
            self._drift = (self.gain, gain, time.monotonic(), seconds)
            self.faults["exposure"] = {"gain": gain, "seconds": seconds}
        else:
            share, seconds = pair(arg, DEFAULT_PASS, (0.01, 1.0), (0.1, 60.0))
            self._passing = (share, time.monotonic(), seconds)
            self.faults["pass"] = {"width": share, "seconds": seconds}
        self._start_animation()

    def _start_animation(self) -> None:
        if self._timer is None:
            self._timer = GLib.timeout_add(ANIMATE_EVERY_MS, self._animate)

    def set_fault(self, kind: str, arg: Any) -> None:
        if kind == "normal":
            self.faults.clear()
            self.gain, self._drift, self._passing = 1.0, None, None
        elif kind in EXPOSURES or kind == "black":
            self.faults["light"] = kind
        elif kind in ("exposure", "pass"):
            self._set_change(kind, arg)
        elif kind == "blur":
            self.faults["blur"] = number(arg, DEFAULT_BLUR_SIGMA, 0.1, 20.0)
        elif kind == "cover":
            self.faults["cover"] = number(arg, DEFAULT_COVER_FRACTION, 0.01, 1.0)
        elif kind == "shift":
            self.faults["shift"] = shift_arg(arg)
        elif kind == "fps":
            if arg is None:
                raise CommandError("fps needs a frame rate: fault NAME fps N")
            rate = number(arg, None, 0.1, FPS)
            if rate < FPS:
                self.faults["fps"] = rate
            else:
                self.faults.pop("fps", None)
        elif kind in ("freeze", "stall"):
            self.faults[kind] = True
        for media in self.live_medias():
            self._apply(media.get_element())

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"codec": self.codec, "faults": dict(self.faults),
                                     "gain": round(self.gain, 3)}


def check_name(name: Any) -> None:
    if not isinstance(name, str) or not MOUNT_NAME.fullmatch(name):
        raise CommandError(f"bad mount name {name!r}: letters, digits, '.', '_', '-'")


def number(arg: Any, default: float | None, low: float, high: float) -> float:
    if arg is None and default is not None:
        return default
    try:
        value = float(arg)
    except (TypeError, ValueError):
        raise CommandError(f"expected a number, got {arg!r}") from None
    if not low <= value <= high:
        raise CommandError(f"{value} is out of range [{low}, {high}]")
    return value


def pair(arg: Any, default: tuple[float, float], first: tuple[float, float],
         second: tuple[float, float]) -> tuple[float, float]:
    """`[a, b]`, or `a` alone (b by default), each within its range."""
    if arg is None:
        return default
    values = arg if isinstance(arg, list) else [arg, default[1]]
    if len(values) != 2:
        raise CommandError(f"expected [value, seconds], got {arg!r}")
    return (number(values[0], None, *first), number(values[1], None, *second))


def shift_arg(arg: Any) -> tuple[int, int]:
    if arg is None:
        return DEFAULT_SHIFT
    values = arg if isinstance(arg, list) else [arg, 0]
    try:
        dx, dy = (int(v) for v in values)
    except (TypeError, ValueError):
        raise CommandError(f"shift takes [dx, dy] in pixels, got {arg!r}") from None
    if abs(dx) >= WIDTH or abs(dy) >= HEIGHT:
        raise CommandError("shift is larger than the picture")
    return dx, dy


class HangListener:
    """Accepts TCP connections and never answers (reads and discards, closes on EOF)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.peers: dict[int, socket.socket] = {}
        GLib.io_add_watch(self.sock.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN, self._accept)

    def _accept(self, *_: Any) -> bool:
        try:
            peer, _addr = self.sock.accept()
        except BlockingIOError:
            return True
        peer.setblocking(False)
        self.peers[peer.fileno()] = peer
        GLib.io_add_watch(peer.fileno(), GLib.PRIORITY_DEFAULT,
                          GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, self._drain)
        return True

    def _drain(self, fd: int, *_: Any) -> bool:
        peer = self.peers[fd]
        try:
            if peer.recv(65536):
                return True
        except BlockingIOError:
            return True
        except OSError:
            pass
        del self.peers[fd]
        peer.close()
        return False


class CameraServer:
    def __init__(self, port: int, hang_port: int) -> None:
        self.loop = GLib.MainLoop()
        self.rtsp = GstRtspServer.RTSPServer()
        self.rtsp.set_address("127.0.0.1")
        self.rtsp.set_service(str(port))
        self.rtsp.set_backlog(1024)
        self.mounts: dict[str, Mount] = {}
        # Clients live in gst-rtsp-server's client thread; commands run on the main loop.
        self.clients: dict[GstRtspServer.RTSPClient, set[str]] = {}
        self.clients_lock = threading.Lock()
        self.rtsp.connect("client-connected", self._on_client_connected)
        if self.rtsp.attach(None) == 0:
            raise OSError(f"cannot listen on 127.0.0.1:{port}")
        self.port = self.rtsp.get_bound_port()
        self.hang = HangListener(hang_port)
        # Sessions of clients that vanished without a TEARDOWN expire only when cleaned up.
        GLib.timeout_add_seconds(2, self._cleanup_sessions)

    # -- clients ------------------------------------------------------------------------------

    def _on_client_connected(self, _server: Any, client: GstRtspServer.RTSPClient) -> None:
        with self.clients_lock:
            self.clients[client] = set()
        client.connect("closed", self._on_client_closed)
        for request in ("describe-request", "setup-request", "play-request"):
            client.connect(request, self._on_request)

    def _on_request(self, client: GstRtspServer.RTSPClient, ctx: Any) -> None:
        if ctx.uri is None:
            return
        with self.clients_lock:
            if client in self.clients:
                self.clients[client].add(ctx.uri.abspath.rstrip("/"))

    def _on_client_closed(self, client: GstRtspServer.RTSPClient) -> None:
        with self.clients_lock:
            self.clients.pop(client, None)

    def _disconnect(self, path: str) -> int:
        """Close every client connection that asked for `path` (or a stream under it)."""
        with self.clients_lock:
            victims = [client for client, paths in self.clients.items()
                       if any(p == path or p.startswith(path + "/") for p in paths)]
        for client in victims:
            client.close()
        return len(victims)

    def _client_count(self) -> int:
        with self.clients_lock:
            return len(self.clients)

    def _cleanup_sessions(self) -> bool:
        self.rtsp.get_session_pool().cleanup()
        return True

    # -- commands -----------------------------------------------------------------------------

    def handle_line(self, line: bytes) -> bool:
        ident = None
        try:
            command = json.loads(line)
            if not isinstance(command, dict):
                raise CommandError("a command is a JSON object with a 'cmd' field")
            ident = command.get("id")
            handler = getattr(self, f"cmd_{command.get('cmd')}", None)
            if handler is None:
                raise CommandError(f"unknown command {command.get('cmd')!r}")
            args = {k: v for k, v in command.items() if k not in ("cmd", "id")}
            result = handler(**args)
            answer = {"ok": True, **result}
        except (CommandError, ValueError, TypeError) as exc:  # bad JSON, arguments, values
            answer = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug here: say so, and keep serving the other cameras
            traceback.print_exc()
            answer = {"ok": False, "error": f"internal error: {exc!r}"}
        if ident is not None:
            answer["id"] = ident
        reply(answer)
        return False  # one-shot idle callback

    def _mount(self, name: str) -> Mount:
        try:
            return self.mounts[name]
        except KeyError:
            raise CommandError(f"no mount named {name!r}") from None

    def _install(self, mount: Mount) -> dict[str, Any]:
        old = self.mounts.get(mount.name)
        if old is not None:
            self._unmount(old)
        self.mounts[mount.name] = mount
        self.rtsp.get_mount_points().add_factory(mount.path, mount.factory)
        return {"path": mount.path, "created": old is None}

    def _unmount(self, mount: Mount) -> int:
        if not mount.stopped:
            self.rtsp.get_mount_points().remove_factory(mount.path)
        return self._disconnect(mount.path)

    def cmd_status(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "pid": os.getpid(), "port": self.port, "hang_port": self.hang.port,
            "clients": self._client_count(), "hang_connections": len(self.hang.peers),
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "max_rss_kb": usage.ru_maxrss,
            "mounts": {name: m.describe() for name, m in self.mounts.items()},
        }

    def cmd_add_clip(self, name: str, path: str, codec: str = "h264") -> dict[str, Any]:
        check_name(name)
        if codec not in CLIP_PIPELINES:
            raise CommandError(f"codec must be one of {sorted(CLIP_PIPELINES)}")
        if not os.path.isfile(path) or '"' in path:
            raise CommandError(f"no such clip file: {path}")
        existing = self.mounts.get(name)
        if existing is not None and existing.kind != "clip":
            raise CommandError(f"{name!r} is already a {existing.kind} mount")
        return self._install(ClipMount(name, os.path.abspath(path), codec))

    def cmd_add_live(self, name: str) -> dict[str, Any]:
        check_name(name)
        existing = self.mounts.get(name)
        if existing is not None and existing.kind != "live":
            raise CommandError(f"{name!r} is already a {existing.kind} mount")
        if existing is not None:
            # Back to a healthy camera; its connected clients stay connected.
            self.cmd_fault(name, "normal")
            return {"path": existing.path, "created": False}
        return self._install(LiveMount(name))

    def cmd_remove(self, name: str) -> dict[str, Any]:
        mount = self._mount(name)
        disconnected = self._unmount(mount)
        del self.mounts[name]
        return {"disconnected": disconnected}

    def cmd_fault(self, name: str, kind: str, arg: Any = None) -> dict[str, Any]:
        mount = self._mount(name)
        if kind not in FAULTS:
            raise CommandError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        disconnected = 0
        if kind == "stop" and not mount.stopped:
            # The camera goes away: its path answers 404 and its clients are cut off.
            self.rtsp.get_mount_points().remove_factory(mount.path)
            mount.stopped = True
            disconnected = self._disconnect(mount.path)
        elif kind in ("start", "normal") and mount.stopped:
            self.rtsp.get_mount_points().add_factory(mount.path, mount.factory)
            mount.stopped = False
        if kind in PICTURE_FAULTS or kind == "normal":
            if not isinstance(mount, LiveMount):
                if kind != "normal":
                    raise CommandError(f"{kind} needs a live mount; {name!r} is a clip")
            else:
                mount.set_fault(kind, arg)
        return {"mount": mount.describe(), "disconnected": disconnected}

    def cmd_quit(self) -> dict[str, Any]:
        GLib.idle_add(self.stop)
        return {}

    # -- lifetime -----------------------------------------------------------------------------

    def stop(self, *_: Any) -> bool:
        self.loop.quit()
        return False

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, self.stop)
        threading.Thread(target=self._read_commands, name="stdin", daemon=True).start()
        reply({"ready": True, "port": self.port, "hang_port": self.hang.port,
               "pid": os.getpid()})
        self.loop.run()
        with self.clients_lock:
            clients = list(self.clients)
        for client in clients:
            client.close()

    def _read_commands(self) -> None:
        # Commands are read here and executed on the GLib main loop, one at a time, in order.
        for line in sys.stdin.buffer:
            if line.strip():
                GLib.idle_add(self.handle_line, line)
        GLib.idle_add(self.stop)  # our parent went away: do not outlive it


def missing_elements() -> list[str]:
    return [f"{element} ({package})" for element, package in REQUIRED.items()
            if Gst.ElementFactory.find(element) is None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8554, help="RTSP port (0: any free port)")
    parser.add_argument("--hang-port", type=int, default=0,
                        help="port of the listener that never answers (0: any free port)")
    options = parser.parse_args()
    Gst.init(None)
    missing = missing_elements()
    if missing:
        reply({"ready": False, "error": "missing GStreamer elements: " + ", ".join(missing)})
        return 2
    try:
        server = CameraServer(options.port, options.hang_port)
    except OSError as exc:
        reply({"ready": False, "error": str(exc)})
        return 1
    server.run()
    sys.stdout.flush()
    # Media pipelines still run in GStreamer's threads; tearing them down at interpreter exit
    # can hang, and there is nothing left to save.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
