"""Pooled PostgreSQL connections lost while idle (a server restart, a failover, an idle
timeout on a proxy) are replaced before a request uses them: the controller pings a
connection only when it sat idle, not on every checkout, and these tests show the ping
still catches a connection the server dropped meanwhile — and that without it the same
request would fail. A real PostgreSQL server; its backends are ended with
`pg_terminate_backend`, as a restart ends them."""

import subprocess
import time

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from controller.db import Database, upgrade
from tests.test_controller_support import drop_postgres_database, postgres_database


def end_backends(database):
    """End every server process serving `database`, as a server restart would."""
    script = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
              "WHERE datname = :'name' AND pid <> pg_backend_pid();\n")
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-q", "-v", "ON_ERROR_STOP=1",
                    "-v", f"name={database}"], input=script, text=True, check=True,
                   capture_output=True)


def backend_pid(db):
    with db.read() as session:
        return session.execute(text("SELECT pg_backend_pid()")).scalar()


def test_a_connection_ended_while_idle_is_replaced_before_a_request_uses_it():
    name, url = postgres_database()
    db = Database(url, pool_size=1, idle_ping_s=0.2)
    try:
        upgrade(url)
        first = backend_pid(db)
        end_backends(name)
        time.sleep(0.3)
        second = backend_pid(db)   # answered, on a new connection
        assert second != first
        time.sleep(0.3)
        pinged = db.engine.raw_connection()   # pinged, and handed out idle, not in a transaction
        try:
            assert pinged.dbapi_connection.info.transaction_status == TransactionStatus.IDLE
        finally:
            pinged.close()
        # a write transaction too, and used at once again: no ping, the same connection
        assert db.transaction(lambda session: session.execute(
            text("SELECT pg_backend_pid()")).scalar()) == second
    finally:
        db.close()
        drop_postgres_database(name)


def test_without_the_idle_ping_the_same_request_fails():
    """The control: a connection used again within the idle time is not pinged, so one
    the server ended meanwhile fails its request (503 in the API) — what the ping avoids."""
    name, url = postgres_database()
    db = Database(url, pool_size=1, idle_ping_s=3600)
    try:
        upgrade(url)
        backend_pid(db)
        end_backends(name)
        failed = None
        try:
            backend_pid(db)
        except Exception as exc:   # noqa: BLE001 - the driver's disconnect error
            failed = exc
        assert failed is not None and getattr(failed, "connection_invalidated", False)
        backend_pid(db)   # SQLAlchemy dropped the pool's connections: the next one works
    finally:
        db.close()
        drop_postgres_database(name)


def test_the_revisions_read_by_the_drivers_cursor_fails_as_sqlalchemy_does(tmp_path):
    """The cache reads host revisions through the driver's own cursor; its failures must
    still be SQLAlchemy's errors, which the API answers 503 (or names a missing schema),
    not a driver's own exception and a 500."""
    from controller.snapshot_cache import revisions
    db = Database(f"sqlite:///{tmp_path}/empty.db")   # no schema: no hosts table
    try:
        with db.read() as session, pytest.raises(DBAPIError):
            revisions(session)
    finally:
        db.close()
