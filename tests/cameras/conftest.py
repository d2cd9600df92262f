"""A real RTSP server for the camera tests: GStreamer's gst-rtsp-server, one process per session.

`rtsp_server` is the controller (see `tests.cameras.harness.RtspServer`):

    url = rtsp_server.add_live("entree")        # live scene, encoded per client, with faults
    url = rtsp_server.add_clip("couloir")       # pre-encoded H.264 clip (codec="h265" too)
    rtsp_server.fault("entree", "freeze")       # … "normal" clears every fault
    rtsp_server.url("entree"), rtsp_server.hang_url(), rtsp_server.status(), rtsp_server.alive()

After each test that used it, the fixture checks that the server is still alive and answering;
if not, that test errors with the server's last words and the next test gets a new server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cameras import clips
from tests.cameras.harness import INSTALL_HINT, RtspServer, RtspServerError


@pytest.fixture(scope="session")
def h264_clip() -> Path:
    return _clip("h264")


@pytest.fixture(scope="session")
def h265_clip() -> Path:
    return _clip("h265")


def _clip(codec: str) -> Path:
    try:
        return clips.clip(codec)
    except clips.FfmpegMissing as exc:
        pytest.fail(f"{exc} ({INSTALL_HINT})", pytrace=False)


@pytest.fixture(scope="session")
def rtsp_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspServer]:
    server = RtspServer(log_path=tmp_path_factory.mktemp("rtsp-server") / "stderr.log")
    try:
        server.start()
    except RtspServerError as exc:  # GStreamerMissing says which packages to install
        pytest.fail(str(exc), pytrace=False)
    yield server
    code = server.stop()
    assert code == 0, f"the RTSP test server exited with {code}:\n{server.stderr_tail()}"


@pytest.fixture
def rtsp_server(rtsp_server_process: RtspServer,
                request: pytest.FixtureRequest) -> Iterator[RtspServer]:
    yield rtsp_server_process
    if not rtsp_server_process.alive():
        code = rtsp_server_process.returncode
        last_words = rtsp_server_process.stderr_tail()
        rtsp_server_process.restart()  # the tests after this one get a server again
        pytest.fail(f"the RTSP test server died or hung during {request.node.nodeid} "
                    f"(exit code {code}); its stderr ends with:\n{last_words}", pytrace=False)
