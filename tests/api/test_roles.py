"""The README's role × endpoint table is the contract: every route of the OpenAPI document
must be in it, with the same roles, and nothing else may be. A new route without a row (or
with other roles than its row) fails here; test_api.py then checks that each route really
answers each role as its `x-vigie-roles` say, and test_scoping.py the site limits."""

from __future__ import annotations

import re
from pathlib import Path

from vigie.api._routes import endpoints
from vigie.api._schemas import SCHEMAS
from vigie.api._spec import openapi_document

README = Path(__file__).resolve().parents[2] / "README.md"
COLUMNS = ("admin", "operator", "technician", "viewer", "no token")
_CELLS = re.compile(r"(?<!\\)\|")
_ITEM = re.compile(r"`([A-Z]+(?:/[A-Z]+)*) (/[^`?\s]*)(?:\?[^`]*)?`")


def _shape(path: str) -> str:
    """Path parameters are compared by place, not name ({id} in the README, {alert_id})."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def readme_table() -> dict[tuple[str, str], frozenset[str]]:
    """(METHOD, path shape) → the roles ticked on its row ("public" for no token)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    head = next(i for i, line in enumerate(lines)
                if line.replace(" ", "").startswith("|endpoint|admin|operator|"))
    cells = [c.strip() for c in lines[head].strip("|").split("|")]
    assert tuple(cells[1:]) == COLUMNS, f"README table columns: {cells}"
    table: dict[tuple[str, str], frozenset[str]] = {}
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        # A cell may hold an escaped pipe (`false\|true`): split on the others only.
        first, *ticks = [c.strip() for c in _CELLS.split(line.strip().strip("|"))]
        assert len(ticks) == len(COLUMNS), f"README row with {len(ticks)} columns: {line}"
        roles = frozenset(c for c, t in zip(COLUMNS, ticks, strict=True) if t == "✓")
        if "no token" in roles:
            roles = frozenset({"public"})
        items = _ITEM.findall(first)
        # Every backticked route is written in full, so that it can be checked.
        routes = re.findall(r"`([^`]*)`", first.split("(")[0])
        assert len(items) == len(routes), (
            f"README row {first!r}: write each route in full, as `METHOD /path`")
        for methods, path in items:
            for method in methods.split("/"):
                key = (method, _shape(path))
                assert key not in table, f"README: {method} {path} on two rows"
                table[key] = roles
    return table


def test_readme_table_and_openapi_document_agree() -> None:
    doc = openapi_document(endpoints(), SCHEMAS, "test")
    documented = {
        (method.upper(), _shape(path)): frozenset(op["x-vigie-roles"])
        for path, item in doc["paths"].items() for method, op in item.items()
    }
    table = readme_table()
    missing = sorted(set(documented) - set(table))
    assert not missing, f"routes with no row in the README's role table: {missing}"
    extra = sorted(set(table) - set(documented))
    assert not extra, f"README rows for routes that do not exist: {extra}"
    wrong = {k: (sorted(table[k]), sorted(v)) for k, v in documented.items() if table[k] != v}
    assert not wrong, f"README roles (left) differ from the API's (right): {wrong}"


def test_every_route_declares_who_may_call_it() -> None:
    for ep in endpoints():
        assert ep.roles is None or (ep.roles and ep.roles <= {"admin", "operator",
                                                              "technician", "viewer"}), ep.path
        # Only the operational endpoints a probe or a scraper calls go without a token.
        if ep.roles is None:
            assert (ep.method == "GET" and not ep.path.startswith("/api/v1/")) or \
                ep.path == "/api/v1/openapi.json", ep.path


def test_the_table_parser_reads_every_row() -> None:
    """The check above can fail: the parser sees rows, roles and absent routes as written."""
    table = readme_table()
    assert ("GET", "/api/v1/audit") in table and ("POST", "/api/v1/alerts/{}/ack") in table
    assert table[("GET", "/healthz")] == {"public"}
    assert table[("POST", "/api/v1/cameras/{}/{}/reference")] == {"admin", "technician"}
    assert ("DELETE", "/api/v1/alerts/{}") not in table
