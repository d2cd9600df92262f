"""PostgreSQL: pool, migrations, batched writes and the queries of the API."""

from vigie.store._pool import Store

__all__ = ["Store"]
