"""The HTTP API: REST under /api/v1, health, metrics, OpenAPI."""

from vigie.api._auth import Authenticator, Principal
from vigie.api._routes import ApiContext
from vigie.api._server import CONTEXT, make_api

__all__ = ["CONTEXT", "ApiContext", "Authenticator", "Principal", "make_api"]
