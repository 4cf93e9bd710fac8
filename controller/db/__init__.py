"""Engine and sessions, with the locking each database needs for atomic claims.

SQLite: WAL, a busy timeout, and write transactions opened with `BEGIN IMMEDIATE`, so
two claims never both read "free" and both write (the second waits for the first).
PostgreSQL: ordinary transactions, and claims lock the rows they read with
`SELECT ... FOR UPDATE` (`Database.locked`), which is what makes several controller
processes on one database safe; a connect timeout, so an unreachable server is an error
(503 `database_unavailable`) within seconds rather than a hung request.

Every statement sent here is a fixed string: the busy timeout is the driver's `timeout`
argument (sqlite3 sets SQLite's busy handler with it), not a PRAGMA built from config.
"""

import contextlib
import logging
import os
import random
import time

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import sessionmaker

from controller.db.models import Base, Device, Host, Vm  # noqa: F401 - re-exported
from controller.db.network_models import Network, NetworkHost  # noqa: F401 - registered
from controller.db.pool_models import DevicePool, PoolShare  # noqa: F401 - registered

log = logging.getLogger(__name__)
# PostgreSQL's "try the transaction again" answers: deadlock_detected, serialization_failure.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
# A pooled PostgreSQL connection idle this long is pinged before it is used again.
IDLE_PING_S = 2.0
MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "migrations")


class Database:
    def __init__(self, url, busy_timeout_s=30.0, pool_size=5, connect_timeout_s=5,
                 idle_ping_s=IDLE_PING_S):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            _make_parent_dir(url)
            self.engine = create_engine(url, connect_args={
                "timeout": busy_timeout_s, "check_same_thread": False})
            _sqlite_pragmas(self.engine)
            writer = self.engine.execution_options(hostplane_begin="BEGIN IMMEDIATE")
            single = self.engine.execution_options(hostplane_begin=None)
        else:
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size * 2,
                                        pool_timeout=busy_timeout_s,
                                        connect_args=_connect_timeout(url, connect_timeout_s))
            _ping_when_idle(self.engine, idle_ping_s)
            writer = self.engine
            single = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._single = single
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(writer, expire_on_commit=False)

    @contextlib.contextmanager
    def read(self):
        with self._read() as session:
            yield session

    @contextlib.contextmanager
    def write(self):
        """One transaction that takes the write lock at once (SQLite) and commits on exit."""
        with self._write() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def single_statements(self):
        """A connection on which each statement commits by itself: for a write that is
        one statement, and reads beside it, without a transaction's BEGIN and COMMIT
        (two of a create's round trips to PostgreSQL)."""
        with self._single.connect() as connection:
            yield connection

    def locked(self, statement):
        """`statement` with row locks where the database has them (PostgreSQL)."""
        return statement if self.is_sqlite else statement.with_for_update()

    def lock_hosts(self, session, host_ids):
        """Lock the rows of `host_ids` in id order: the first lock of every transaction
        that changes hosts, devices or VMs (hosts before devices, each in id order), so
        two writers never wait for each other in a circle."""
        wanted = sorted(set(host_ids) - {None})
        if wanted and not self.is_sqlite:   # SQLite: BEGIN IMMEDIATE holds the whole file
            session.execute(select(Host.id).where(Host.id.in_(wanted)).order_by(Host.id)
                            .with_for_update())

    def transaction(self, work, attempts=4):
        """`work(session)` in one write transaction, run again (a bounded number of times,
        after a short random pause) when PostgreSQL answers deadlock or serialization
        failure; `work` must therefore do nothing but database work."""
        for attempt in range(1, attempts + 1):
            try:
                with self.write() as session:
                    return work(session)
            except DBAPIError as exc:
                state = getattr(exc.orig, "sqlstate", None)
                if state not in RETRYABLE_SQLSTATES or attempt == attempts:
                    raise
                log.info("transaction retried after %s (attempt %d)", state, attempt)
                time.sleep(random.uniform(0.01, 0.05) * attempt)  # nosec B311 - backoff

    def ping(self):
        """Raise unless the database answers a query (the health check)."""
        with self.read() as session:
            session.execute(text("SELECT 1"))

    def close(self):
        self.engine.dispose()


def upgrade(url, revision="head"):
    """Apply the versioned migrations (what `hostplane-controller db upgrade` runs)."""
    from alembic import command
    from alembic.config import Config
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision)


def _make_parent_dir(url):
    path = url.split(":///", 1)[-1]
    if path and path != ":memory:" and not url.startswith("sqlite:///:memory:"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


_SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL",
                   "PRAGMA foreign_keys=ON")
_BEGINS = frozenset({"BEGIN", "BEGIN IMMEDIATE"})


def _connect_timeout(url, seconds):
    """libpq's connect_timeout for PostgreSQL drivers; other drivers get nothing."""
    return {"connect_timeout": max(1, int(seconds))} if url.startswith("postgresql") else {}


def _ping_when_idle(engine, idle_s):
    """Ask a pooled connection `SELECT 1` before use only when it sat idle `idle_s`: one
    left over from before a server restart is then replaced, not handed to a request,
    and a connection reused moments after its last use costs no extra round trip (a
    ping on every checkout was a third of a create's round trips under load). A server
    lost mid-burst still fails the requests of that moment with 503, and SQLAlchemy
    then drops every connection of the pool."""
    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection, record, _proxy):
        if time.monotonic() - record.info.get("idle_since", float("inf")) < idle_s:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()   # hand the connection out as it was: idle
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"connection lost while idle: {exc}") from exc


def _sqlite_pragmas(engine):
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None   # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        begin = connection.get_execution_options().get("hostplane_begin", "BEGIN")
        if begin is None:   # Database.single_statements: each statement its own transaction
            return
        if begin not in _BEGINS:
            raise ValueError(f"not a transaction start: {begin!r}")
        connection.exec_driver_sql(begin)
