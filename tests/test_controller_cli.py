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
