"""The `vigie` command: parse arguments, load config, set up logging, call the app."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vigie import __version__
from vigie.config import DEFAULT_CONFIG_PATH, SENSOR_KINDS, Config, _duration, load_config
from vigie.errors import ConfigError, VigieError
from vigie.logs import setup_logging
from vigie.secrets import redact_text

__all__ = ["main"]

log = logging.getLogger("vigie")


def _config_path(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    return Path(os.environ.get("VIGIE_CONFIG") or DEFAULT_CONFIG_PATH)


def _load(args: argparse.Namespace) -> Config:
    config = load_config(_config_path(args))
    setup_logging(args.log_level or config.logging.level,
                  "json" if args.json_logs else config.logging.format)
    return config


async def _serve_until_signalled(config: Config) -> None:
    from vigie.app import running_node, settle_memory

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_node(config) as node:
        log.info("vigie %s node %s running: %d site(s), API on %s", __version__,
                 config.node.name, len(config.sites), node.api_url)
        settle_memory()
        await stop.wait()
        log.info("stopping")
    # running_node logs the summary line once everything has stopped.


def cmd_run(args: argparse.Namespace) -> int:
    asyncio.run(_serve_until_signalled(_load(args)))
    return 0


async def _with_store(config: Config, work: Callable[[Any], Awaitable[int]]) -> int:
    from vigie.app import open_store

    async with AsyncExitStack() as stack:
        store = await open_store(config, stack)
        async with store.connection() as conn:
            return await work(conn)


def cmd_migrate(args: argparse.Namespace) -> int:
    from vigie.app import open_store
    from vigie.progress import Progress

    config = _load(args)
    progress: list[Progress] = []

    def step(done: int, total: int, migration: Any) -> None:
        if not progress:
            progress.append(Progress("migrations", total))
        progress[0].advance(note=f"{migration.version:04d}_{migration.name}")

    async def work() -> int:
        async with AsyncExitStack() as stack:
            store = await open_store(config, stack, on_progress=step)
            if progress:
                progress[0].close()
            async with store.connection() as conn:
                version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
        print(f"database schema at version {version}")
        return 0

    return asyncio.run(work())


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    config = load_config(path)  # ConfigError is reported by main()
    from vigie.app import load_schedule

    load_schedule(config)  # the school calendar file is part of the configuration
    cameras = sum(len(s.cameras) for s in config.sites)
    sensors = sum(len(s.sensors) for s in config.sites)
    kinds = {k: sum(1 for s in config.sites for x in s.sensors if x.kind == k)
             for k in SENSOR_KINDS}
    print(f"{path}: ok — {len(config.sites)} site(s), {cameras} camera(s), {sensors} sensor(s)")
    print("  sensors by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.items() if n))
    database = ("external" if config.database.dsn is not None
                else f"embedded under {config.node.data_dir}")
    print(f"  database: {database}"
          f"; mqtt: {redact_text(config.mqtt.url)} as {config.mqtt_client_id}"
          f"; api: {config.api.listen}")
    return 0


def _operator() -> str:
    """Who runs the command, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def cmd_token(args: argparse.Namespace) -> int:
    from vigie.store import _audit as audit
    from vigie.store import _tokens

    config = _load(args)

    async def create(conn: Any) -> int:
        sites = None
        if args.sites is not None:
            sites = [s.strip() for s in args.sites.split(",") if s.strip()]
            if not sites:  # an empty list must not silently mean "every site"
                raise VigieError("--sites needs at least one site id (leave it out for all)")
        unknown = [s for s in sites or [] if config.site(s) is None]
        if unknown:
            raise VigieError(f"unknown site(s): {', '.join(unknown)}")
        try:
            lifetime = _duration(args.expires) if args.expires else None
        except ValueError as exc:
            raise VigieError(f"--expires {args.expires!r}: {exc} (e.g. 90d, 12h)") from None
        expires = datetime.now(UTC) + timedelta(seconds=lifetime) if lifetime else None
        token, info = await _tokens.create_token(
            conn, name=args.name, role=args.role, sites=sites, expires_at=expires)
        await audit.record(conn, actor=_operator(), action="token.create", target=info.name,
                           details={"role": info.role, "sites": sites})
        print(token)
        print(f"# token {info.name!r} ({info.role}"
              f"{', sites ' + ','.join(sites) if sites else ', all sites'}"
              f"{', expires ' + expires.isoformat() if expires else ''}) — shown only once",
              file=sys.stderr)
        return 0

    async def list_(conn: Any) -> int:
        await audit.record(conn, actor=_operator(), action="token.list")
        for t in await _tokens.list_tokens(conn):
            state = "revoked" if t.revoked_at else (
                "expired" if t.expires_at and t.expires_at < datetime.now(UTC) else "active")
            sites = ",".join(sorted(t.sites)) if t.sites is not None else "*"
            used = t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never"
            print(f"{t.name:24} {t.role:11} {state:8} sites={sites} last_used={used}")
        return 0

    async def revoke(conn: Any) -> int:
        info = await _tokens.revoke_token(conn, args.name)
        await audit.record(conn, actor=_operator(), action="token.revoke", target=info.name)
        print(f"revoked token {info.name!r}")
        return 0

    work = {"create": create, "list": list_, "revoke": revoke}[args.token_cmd]
    return asyncio.run(_with_store(config, work))


def cmd_retention(args: argparse.Namespace) -> int:
    """One retention pass (partitions ahead, expired data purged), e.g. from cron."""
    from vigie.app import open_store
    from vigie.retention import RetentionJob

    config = _load(args)

    async def work() -> int:
        async with AsyncExitStack() as stack:
            store = await open_store(config, stack)
            report = await RetentionJob(store, config, lambda: datetime.now(UTC)).run_once()
        if not report.ran:
            print("another node is running retention now; nothing done")
            return 0
        print(f"partitions created: {', '.join(report.created) or 'none'}")
        print(f"partitions dropped: {', '.join(report.dropped) or 'none'}")
        deleted = ", ".join(f"{k} {n}" for k, n in report.deleted.items() if n)
        print(f"rows deleted: {deleted or 'none'}; snapshot files removed: {report.files}")
        return 0

    return asyncio.run(work())


def cmd_demo(args: argparse.Namespace) -> int:
    from vigie.demo import run_demo

    setup_logging(args.log_level or "info", "json" if args.json_logs else "human")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(Path(args.data_dir).resolve(), args.listen))
    return 0


def cmd_calendar(args: argparse.Namespace) -> int:
    from vigie.alerts._calendar import DEFAULT_CALENDAR_PATH, CalendarError, import_calendar
    from vigie.progress import Progress

    output = args.output or DEFAULT_CALENDAR_PATH
    try:
        with Progress("calendar import", total=1) as progress:
            calendar = import_calendar(args.file, output)
            progress.advance(note=f"{len(calendar.records)} record(s) validated and written")
    except CalendarError as exc:
        print(f"vigie: {exc.source}: nothing written", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    used = sum(r.closes_schools for r in calendar.records)
    print(f"{output}: {len(calendar.records)} record(s) from {args.file}, "
          f"{used} closing schools")
    for zone, years in calendar.coverage().items():
        print(f"  {zone}: {', '.join(years)}")
    for note in calendar.notes():
        print(f"  note: {note}")
    return 0


def _node_url(args: argparse.Namespace) -> str:
    """The running node's API: --url, else $VIGIE_URL, else api.listen of the config."""
    url: str | None = args.url or os.environ.get("VIGIE_URL")
    if not url:
        config = load_config(_config_path(args))
        host = config.api.host if config.api.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        url = f"http://{'[' + host + ']' if ':' in host else host}:{config.api.port}"
    return url


def cmd_status(args: argparse.Namespace) -> int:
    from vigie.cli_status import run_status

    return run_status(_node_url(args), args.token, args.alerts, args.json)


def cmd_relearn(args: argparse.Namespace) -> int:
    from vigie.cli_relearn import run_relearn

    if args.timeout <= 0:
        raise VigieError("--timeout must be a positive number of seconds")
    return run_relearn(_node_url(args), args.token, args.site, args.camera or [], args.wait,
                       args.timeout)


def cmd_notifiers(args: argparse.Namespace) -> int:
    from vigie.cli_notifiers import list_dead_letters, retry_dead_letters

    config = _load(args)

    async def work(conn: Any) -> int:
        if args.notifiers_cmd == "dead-letters":
            if args.limit < 1:
                raise VigieError("--limit must be at least 1")
            return await list_dead_letters(conn, config, args.notifier, args.limit)
        return await retry_dead_letters(conn, config, _operator(), args.ids, args.notifier,
                                        args.site)

    return asyncio.run(_with_store(config, work))


def cmd_completion(args: argparse.Namespace) -> int:
    from vigie.cli_completion import completion_script

    sys.stdout.write(completion_script(_parser(), args.shell))
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="config file (default: $VIGIE_CONFIG, "
                        f"else {DEFAULT_CONFIG_PATH})")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    common.add_argument("--json-logs", action="store_true", help="log JSON lines")
    parser = argparse.ArgumentParser(
        prog="vigie", description="Monitoring backend for a video-protection network.")
    parser.add_argument("--version", action="version", version=f"vigie {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run a node").set_defaults(func=cmd_run)
    sub.add_parser("migrate", parents=[common], help="apply database migrations"
                   ).set_defaults(func=cmd_migrate)
    sub.add_parser("check-config", parents=[common], help="validate a config file"
                   ).set_defaults(func=cmd_check_config)
    sub.add_parser("retention", parents=[common],
                   help="purge expired data and create partitions ahead, once"
                   ).set_defaults(func=cmd_retention)
    token = sub.add_parser("token", help="API tokens")
    tsub = token.add_subparsers(dest="token_cmd", required=True)
    create = tsub.add_parser("create", parents=[common], help="create a token (shown once)")
    create.add_argument("--role", required=True,
                        choices=["admin", "operator", "technician", "viewer"])
    create.add_argument("--name", required=True)
    create.add_argument("--sites", help="comma-separated site ids (default: every site)")
    create.add_argument("--expires", help="lifetime, e.g. 90d, 12h")
    tsub.add_parser("list", parents=[common], help="list tokens")
    revoke = tsub.add_parser("revoke", parents=[common], help="revoke a token")
    revoke.add_argument("name")
    token.set_defaults(func=cmd_token)
    calendar = sub.add_parser("calendar", help="school holidays calendar")
    csub = calendar.add_subparsers(dest="calendar_cmd", required=True)
    imp = csub.add_parser(
        "import", help="validate a fr-en-calendrier-scolaire export (CSV with ';' or JSON) "
        "and install it")
    imp.add_argument("file", help="the dataset's CSV or JSON export")
    imp.add_argument("--output", help="where to write it, as JSON "
                     "(default: config/calendrier-scolaire.json)")
    calendar.set_defaults(func=cmd_calendar)
    demo = sub.add_parser("demo", parents=[common],
                          help="run a self-contained demo (embedded database and broker)")
    demo.add_argument("--data-dir", default="./var/demo")
    demo.add_argument("--listen", default="127.0.0.1:8080")
    demo.set_defaults(func=cmd_demo)
    status = sub.add_parser("status", parents=[common],
                            help="summary of a running node, through its API")
    status.add_argument("--url", help="the node's API (default: $VIGIE_URL, else api.listen "
                        "of the config)")
    status.add_argument("--token", help="an API token, any role (default: $VIGIE_TOKEN); "
                        "without one, only health and metrics")
    status.add_argument("--alerts", type=int, default=10, help="how many alerts to list")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)
    cameras = sub.add_parser("cameras", help="cameras of a running node, through its API")
    camsub = cameras.add_subparsers(dest="cameras_cmd", required=True)
    relearn = camsub.add_parser(
        "relearn", parents=[common],
        help="re-learn the reference picture of a site's cameras after a planned change")
    relearn.add_argument("--site", required=True, help="the site id")
    relearn.add_argument("--camera", action="append", metavar="CAMERA",
                         help="a camera id of the site, repeatable (default: every camera)")
    relearn.add_argument("--wait", action="store_true",
                         help="show the learning's progress until every camera has learned")
    relearn.add_argument("--timeout", type=float, default=600.0,
                         help="with --wait, give up after this many seconds (default 600)")
    relearn.add_argument("--url", help="the node's API (default: $VIGIE_URL, else api.listen "
                         "of the config)")
    relearn.add_argument("--token", help="a technician or admin token (default: $VIGIE_TOKEN)")
    cameras.set_defaults(func=cmd_relearn)
    notifiers = sub.add_parser("notifiers", help="notifications given up (dead letters)")
    nsub = notifiers.add_subparsers(dest="notifiers_cmd", required=True)
    dead = nsub.add_parser("dead-letters", parents=[common],
                           help="list dead letters, newest first")
    dead.add_argument("--notifier", help="one notifier's")
    dead.add_argument("--limit", type=int, default=100, help="how many (default 100)")
    retry = nsub.add_parser("retry", parents=[common],
                            help="send dead letters again once the receiver is mended")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letter ids")
    retry.add_argument("--notifier", help="instead of ids: this notifier's oldest 100")
    retry.add_argument("--site", help="with --notifier: only this site's")
    notifiers.set_defaults(func=cmd_notifiers)
    from vigie.cli_completion import SHELLS

    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(func=cmd_completion)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"vigie: invalid configuration {exc.source}".rstrip(), file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except VigieError as exc:
        print(f"vigie: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
