"""The operator console: a page for the supervision room, served by the node at `/`.

Plain HTML, CSS and JavaScript shipped with the package (no build step, nothing from a CDN).
The static files need no token; the page calls the API with the operator's bearer token
(kept in the browser's sessionStorage), so it can do nothing the token may not. A strict
Content-Security-Policy allows only the node's own scripts, styles, images and WebSocket.
"""

from __future__ import annotations

import re
from importlib import resources

from aiohttp import web

__all__ = ["CSP", "install_console"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")
_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript",
          ".svg": "image/svg+xml"}


def _policy(host: str) -> str:
    """CSP, with the live feed's WebSocket named as well: 'self' covers ws: and wss: only in
    browsers that follow CSP 3 (older Safari does not)."""
    if not _HOST.fullmatch(host):
        return CSP
    return CSP.replace("connect-src 'self'", f"connect-src 'self' ws://{host} wss://{host}")


def _files() -> dict[str, tuple[bytes, str]]:
    """Every static file, read once: name → (body, content type)."""
    static = resources.files(__name__).joinpath("static")
    out: dict[str, tuple[bytes, str]] = {}
    for entry in static.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            out[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return out


def install_console(app: web.Application) -> None:
    files = _files()

    def respond(request: web.Request, name: str) -> web.Response:
        body, content_type = files[name]
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers={
            "Content-Security-Policy": _policy(request.host),
            "Cache-Control": "no-cache",  # revalidate: a new version shows at the next load
            "Cross-Origin-Opener-Policy": "same-origin",
        })

    async def index(request: web.Request) -> web.Response:
        return respond(request, "index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files or name == "index.html":
            raise web.HTTPNotFound(text="not found")
        return respond(request, name)

    app.router.add_get("/", index, name="console")
    app.router.add_get("/console/{name}", asset, name="console-asset")
