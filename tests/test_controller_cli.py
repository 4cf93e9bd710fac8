"""`hostplane-controller`: `db upgrade` builds the schema; serving needs an admin token."""

import os
import subprocess
import sys

from sqlalchemy import create_engine, inspect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, **env):
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOSTPLANE_CONTROLLER_CONFIG": "/nonexistent",
                               **env})


def test_db_upgrade_creates_the_schema_and_can_run_again(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    for _ in range(2):
        done = run("db", "upgrade", HOSTPLANE_DATABASE_URL=url)
        assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    assert {"hosts", "devices", "vms", "alembic_version"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_serve_refuses_without_admin_token_in_one_line():
    done = run("serve", HOSTPLANE_SERVER_ADMIN_TOKEN="")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "admin token" in done.stderr


def test_app_on_a_fresh_sqlite_file_applies_the_schema_and_answers(tmp_path):
    """No `db upgrade` first: the embedded database gets its schema at start, and the
    controller answers 200, not 503 database_unavailable."""
    from controller.app import create_app
    from tests.test_controller_support import ADMIN, controller_config
    app = create_app(controller_config(tmp_path, f"sqlite:///{tmp_path}/fresh.db"), start=False)
    answer = app.test_client().get("/v1/hosts", headers=ADMIN)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {"hosts": []}
    app.extensions["hostplane_controller"].close()


def test_serve_on_an_empty_postgresql_refuses_with_the_command():
    from tests.test_controller_support import drop_postgres_database, postgres_database
    name, url = postgres_database()
    try:
        done = run("serve", HOSTPLANE_SERVER_ADMIN_TOKEN="x" * 24, HOSTPLANE_DATABASE_URL=url)
    finally:
        drop_postgres_database(name)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "empty (no schema)" in done.stderr
    assert "run 'hostplane-controller db upgrade'" in done.stderr
    assert "x" * 24 not in done.stderr


def test_app_on_a_database_without_tables_says_schema_missing(tmp_path):
    """The schema dropped behind a running controller: 503 schema_missing, not an outage."""
    from controller.app import create_app
    from tests.test_controller_support import ADMIN, controller_config
    url = f"sqlite:///{tmp_path}/c.db"
    app = create_app(controller_config(tmp_path, url), start=False)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE devices")
    engine.dispose()
    answer = app.test_client().get("/v1/devices", headers=ADMIN)
    assert answer.status_code == 503
    assert answer.get_json()["error"]["code"] == "schema_missing"
    app.extensions["hostplane_controller"].close()


def test_check_never_prints_the_database_password():
    """A password holding ':' (the hand-written masking kept its first part)."""
    from tests.support import free_port
    url = f"postgresql://hostplane:s3cr:et-9xq@127.0.0.1:{free_port()}/hostplane"
    done = run("check", HOSTPLANE_DATABASE_URL=url, HOSTPLANE_DATABASE_CONNECT_TIMEOUT_S="1",
               HOSTPLANE_SERVER_ADMIN_TOKEN="a" * 32)
    database = [line for line in done.stdout.splitlines() if "database" in line]
    assert done.returncode == 1 and database and database[0].startswith("FAIL"), done.stdout
    assert "s3cr" not in done.stdout + done.stderr and "9xq" not in done.stdout + done.stderr


def test_database_urls_are_shown_with_the_password_masked():
    from controller.db.schema import safe_url
    assert safe_url("postgresql://hostplane:s3cr:et@db.example:5432/hp") == \
        "postgresql://hostplane:***@db.example:5432/hp"
    assert safe_url("postgresql+psycopg://u:p%40ss@db/hp?sslmode=require") == \
        "postgresql+psycopg://u:***@db/hp?sslmode=require"
    assert safe_url("sqlite:////var/lib/hostplane/controller.db") == \
        "sqlite:////var/lib/hostplane/controller.db"
    assert "secret" not in safe_url("not a url: secret")
