"""`hostplane-controller`: serve (default) under gunicorn, `db upgrade`, `check`.

`check` says, one line each, whether the configuration can be served (tokens, TLS
cert/key, the agents' CA bundle) and whether the database answers; exit 1 if not.
Certificates that expire within 30 days warn; expired ones fail, with the date.
"""

import argparse
import os
import sys

from controller.config import check_serving_config, load_controller_config
from hostplane.config import ConfigError
from hostplane.service import (RENEW_HINT, certificate_checks, check_ca_bundle, check_tls,
                               exec_gunicorn)
from hostplane.tables import table_lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hostplane-controller",
                                     description="hostplane controller")
    parser.add_argument("--config", help="config file (default /etc/hostplane/controller.toml)")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the controller API under gunicorn (default)")
    serve.add_argument("--bind", help="override [server] bind")
    db = commands.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"], help="apply migrations up to the newest")
    commands.add_parser("check", help="is the configuration servable (tokens, TLS, agents' "
                        "CA) and the database reachable? exit 1 if not")
    args = parser.parse_args(argv)
    try:
        config = load_controller_config(args.config)
        if args.command == "db":
            from controller.db import upgrade
            upgrade(config["database"]["url"])
            print(f"hostplane-controller: schema up to date ({_safe(config)})")
            return 0
        if args.command == "check":
            return check(config)
        return serve_forever(config, args)
    except ConfigError as exc:
        print(f"hostplane-controller: {exc}", file=sys.stderr)
        return 2


def serve_forever(config, args):
    from controller.db import upgrade
    from controller.db.schema import ensure_schema
    check_serving_config(config)
    ensure_schema(config["database"]["url"], upgrade)   # refused here in one line
    exec_gunicorn(config["server"], "controller.app:create_app()", "HOSTPLANE_CONTROLLER_CONFIG",
                  args.config, bind=getattr(args, "bind", None), threads=8)
    return 0  # not reached


def check(config):
    """Print one line per readiness check; 0 when all pass, 1 otherwise."""
    server = config["server"]
    tls = f"HTTPS ({server['tls_cert']})" if server["tls_cert"] else "plain HTTP"
    checks = [
        ("configuration", lambda: check_serving_config(config), "servable"),
        ("tls", lambda: check_tls(server),
         tls + (", clear text refused" if server["require_tls"] else "")),
        ("agents ca", lambda: check_ca_bundle(config["agents"]["ca"], "[agents] ca"),
         config["agents"]["ca"] or "system trust store"),
        ("database", lambda: _database_answers(config), _safe(config)),
    ]
    rows = []
    for name, action, fine in checks:
        problem = _problem(action)
        rows.append(("FAIL" if problem else "ok", name, problem or fine))
    for name, status, sentence in certificate_checks(
            [("tls expiry", server["tls_cert"]), ("ca expiry", config["agents"]["ca"])]):
        hint = f" ({RENEW_HINT})" if status != "ok" else ""
        rows.append((status if status in ("ok", "warn") else "FAIL", name, sentence + hint))
    for line in table_lines(rows, [("", lambda row: row[0]), ("", lambda row: row[1]),
                                   ("", lambda row: row[2])], header=False, min_widths=(4, 13)):
        print(line)
    return 1 if any(row[0] == "FAIL" for row in rows) else 0


def _problem(action):
    try:
        action()
    except ConfigError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - check reports, it does not crash
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _database_answers(config):
    from sqlalchemy import text

    from controller.db import Database
    database = config["database"]
    path = database["url"].split(":///", 1)[-1]
    if database["url"].startswith("sqlite") and not os.path.exists(path):
        raise ConfigError(f"no database at {path}: run 'hostplane-controller db upgrade'")
    db = Database(database["url"], database["busy_timeout_s"], database["pool_size"],
                  database["connect_timeout_s"])
    try:
        with db.read() as session:
            session.execute(text("SELECT 1 FROM hosts LIMIT 1"))
    finally:
        db.close()


def _safe(config):
    """The database URL without its password, for the one line printed."""
    from controller.db.schema import safe_url
    return safe_url(config["database"]["url"])


if __name__ == "__main__":
    sys.exit(main())
