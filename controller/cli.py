"""`hostplane-controller`: serve (default) under gunicorn, `db upgrade`."""

import argparse
import sys

from controller.config import check_serving_config, load_controller_config
from hostplane.config import ConfigError
from hostplane.service import exec_gunicorn


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hostplane-controller",
                                     description="hostplane controller")
    parser.add_argument("--config", help="config file (default /etc/hostplane/controller.toml)")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the controller API under gunicorn (default)")
    serve.add_argument("--bind", help="override [server] bind")
    db = commands.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"], help="apply migrations up to the newest")
    args = parser.parse_args(argv)
    try:
        config = load_controller_config(args.config)
        if args.command == "db":
            from controller.db import upgrade
            upgrade(config["database"]["url"])
            print(f"hostplane-controller: schema up to date ({_safe(config)})")
            return 0
        return serve_forever(config, args)
    except ConfigError as exc:
        print(f"hostplane-controller: {exc}", file=sys.stderr)
        return 2


def serve_forever(config, args):
    check_serving_config(config)
    exec_gunicorn(config["server"], "controller.app:create_app()", "HOSTPLANE_CONTROLLER_CONFIG",
                  args.config, bind=getattr(args, "bind", None), threads=8)
    return 0  # not reached


def _safe(config):
    """The database URL without its password, for the one line printed."""
    url = config["database"]["url"]
    head, at, tail = url.rpartition("@")
    return f"{head.split(':', 2)[0]}:{head.split(':', 2)[1]}:***@{tail}" if at and \
        head.count(":") >= 2 else url


if __name__ == "__main__":
    sys.exit(main())
