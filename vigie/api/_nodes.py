"""GET /api/v1/nodes: the nodes sharing this database, their state and how many cameras
each watches (several-node deployments; a lone node lists itself)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from vigie.api._auth import Principal
from vigie.api._spec import ALL_ROLES, Endpoint
from vigie.cluster import list_nodes

if TYPE_CHECKING:
    from vigie.api._routes import ApiContext

__all__ = ["node_endpoints"]


async def get_nodes(request: web.Request, ctx: ApiContext, p: Principal,
                    q: dict[str, Any]) -> web.Response:
    from vigie.api._routes import ok

    async with ctx.store.connection() as conn:
        nodes = await list_nodes(conn)
    return ok({"items": [n.to_json() for n in nodes], "next_cursor": None})


def node_endpoints() -> list[Endpoint]:
    return [Endpoint("GET", "/api/v1/nodes", get_nodes,
                     "Nodes sharing the database: state, cameras watched, last heartbeat",
                     "operations", ALL_ROLES, response="NodeList")]
