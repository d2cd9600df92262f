"""Tools for the deploy/ tests: the real promtool, amtool, Prometheus and Alertmanager from
Debian's packages (scripts/test installs them); a missing one fails the test with the
package to install, since a check that did not run must not look like one that passed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

DEBIAN_PACKAGE = {
    "promtool": "prometheus", "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager", "prometheus-alertmanager": "prometheus-alertmanager",
}


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install {DEBIAN_PACKAGE.get(name, name)} "
                    "(scripts/test installs it)", pytrace=False)
    return path


def run(*args: str, cwd: Path | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


# The RTSP test server of tests/cameras, for the tests here that need cameras to watch.
from tests.cameras.conftest import h264_clip, rtsp_server, rtsp_server_process  # noqa: E402

__all__ = ["h264_clip", "rtsp_server", "rtsp_server_process"]
