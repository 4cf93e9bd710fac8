"""Is the database's schema the one this code needs? Checked when the controller starts,
so a missing schema is said as such instead of answering every request 503.

SQLite (the embedded default, one machine) gets its migrations applied at start, under a
file lock beside the database because gunicorn's workers start together. PostgreSQL is
shared and upgraded deliberately: the controller refuses to start and prints the command.
"""

import contextlib
import logging

from sqlalchemy import create_engine, make_url, pool
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hostplane.config import ConfigError
from hostplane.filelock import exclusive

log = logging.getLogger(__name__)


def head_revision():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from controller.db import MIGRATIONS
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(url):
    """The revision stamped in the database (None: no schema), or raise SQLAlchemyError
    when the database cannot be reached."""
    from alembic.runtime.migration import MigrationContext
    engine = create_engine(url, poolclass=pool.NullPool, **_connect_args(url))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def ensure_schema(url, upgrade):
    """Leave a current schema alone; bring SQLite up to date with `upgrade(url)`; refuse
    PostgreSQL's missing or old schema with a ConfigError naming the command. A database
    that cannot be reached now is logged and left to answer 503 until it is back."""
    head = head_revision()
    try:
        current = current_revision(url)
        if current == head:
            return
        if url.startswith("sqlite"):
            with _lock_beside(url):
                if current_revision(url) != head:
                    log.warning("applying the controller's schema to %s (%s -> %s)",
                                safe_url(url), current or "empty", head)
                    upgrade(url)
            return
    except SQLAlchemyError as exc:
        log.warning("database not reachable at start, schema not checked: %s",
                    str(exc).splitlines()[0])
        return
    found = f"at revision {current}" if current else "empty (no schema)"
    raise ConfigError(f"the database {safe_url(url)} is {found}, this controller needs {head}: "
                      "run 'hostplane-controller db upgrade' with the same configuration "
                      "(or HOSTPLANE_DATABASE_URL) first")


def _lock_beside(url):
    path = url.split(":///", 1)[-1]
    if not path or path == ":memory:":
        return contextlib.nullcontext()
    return exclusive(path + ".schema-lock")


def _connect_args(url):
    return {"connect_args": {"connect_timeout": 5}} if url.startswith("postgresql") else {}


def safe_url(url):
    """The URL as printed or logged: SQLAlchemy's rendering, the password masked (a URL
    it cannot read is not shown at all)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a database URL that cannot be parsed)"
