"""Pre-encoded camera clips for the RTSP test server, made once with ffmpeg and cached.

A clip is what a camera's substream looks like: 640×360, 10 fps, a keyframe every 10 frames, no
B-frames, a textured moving picture with sensor-like noise. The server streams it without
re-encoding, so a clip camera costs almost nothing; it does not loop (a seamless loop would need
segment seeks inside gst-rtsp-server's own seeking), so each client connection can stream for
the clip's length: `seconds`.

The cache (`$VIGIE_TEST_CACHE`, else `tests/cameras/.cache/`, which ignores itself in git) is
keyed by the exact ffmpeg arguments; clips are written under a lock and renamed into place, so
test sessions running at the same time share them and never see a half-written file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["DEFAULT_SECONDS", "FfmpegMissing", "cache_dir", "clip", "ffmpeg_arguments"]

SOURCE = "testsrc2=size=640x360:rate=10,noise=alls=12:allf=t"
# H.265 encodes ~10x slower than H.264 here: its clip is shorter.
DEFAULT_SECONDS = {"h264": 300, "h265": 30}
_ENCODERS = {
    # ultrafast + a capped bitrate: 300 s encode in ~6 s and weigh ~30 MB (the noise is costly).
    "h264": ["-c:v", "libx264", "-preset", "ultrafast", "-b:v", "800k", "-maxrate", "800k",
             "-bufsize", "800k", "-sc_threshold", "0"],
    "h265": ["-c:v", "libx265", "-preset", "ultrafast", "-b:v", "600k",
             "-x265-params", "log-level=error:keyint=10:min-keyint=10:scenecut=0:bframes=0"],
}


class FfmpegMissing(RuntimeError):
    """ffmpeg is needed to make the clips (Debian: `apt-get install ffmpeg`)."""


def cache_dir() -> Path:
    path = Path(os.environ.get("VIGIE_TEST_CACHE") or Path(__file__).with_name(".cache"))
    path.mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return path


def ffmpeg_arguments(codec: str, seconds: int) -> list[str]:
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {sorted(_ENCODERS)}, not {codec!r}")
    return ["-f", "lavfi", "-i", SOURCE, "-t", str(seconds), "-g", "10", "-keyint_min", "10",
            *_ENCODERS[codec], "-pix_fmt", "yuv420p", "-an", "-movflags", "+faststart"]


def clip(codec: str = "h264", seconds: int | None = None, directory: Path | None = None) -> Path:
    """The path of a cached clip, encoding it first if no session has yet."""
    seconds = seconds or DEFAULT_SECONDS[codec]
    arguments = ffmpeg_arguments(codec, seconds)
    digest = hashlib.sha256("\0".join(arguments).encode()).hexdigest()[:12]
    directory = directory or cache_dir()
    target = directory / f"testsrc2-{codec}-{seconds}s-{digest}.mp4"
    if target.exists():
        return target
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise FfmpegMissing("ffmpeg is needed to make the test clips: apt-get install ffmpeg")
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be encoding the same clip
        if not target.exists():
            partial = target.with_name(f".{target.stem}.{os.getpid()}.mp4")
            try:
                subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                                *arguments, str(partial)],
                               check=True, capture_output=True, timeout=600)
                partial.rename(target)
            except subprocess.CalledProcessError as exc:
                raise RuntimeError(f"ffmpeg failed to make {target.name}: "
                                   f"{exc.stderr.decode(errors='replace')[-2000:]}") from exc
            finally:
                partial.unlink(missing_ok=True)
    return target
