"""Helpers for the operations tests (no tests here): a real controller on loopback."""

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time

import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv/bin")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url, timeout=60, process=None):
    """Poll `url` until it answers 200 (or `process` dies)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:   # not listening yet, or still booting
            pass
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server behind {url} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout} s")
        time.sleep(0.3)


@contextlib.contextmanager
def serving(command, url, environ, log_path):
    """Run a server in its own process group until the block ends."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=environ, stdout=log, stderr=log,
                                   start_new_session=True)
    try:
        wait_for(url, process=process)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def running_controller(tmp_path, poll_interval_s=1):
    """`hostplane-controller serve` (gunicorn) over SQLite, as the unit starts it."""
    port, token = free_port(), secrets.token_hex(16)
    config = tmp_path / "controller.toml"
    config.write_text(f'[server]\nbind = "127.0.0.1:{port}"\nadmin_token = "{token}"\n'
                      f'workers = 1\n\n[database]\nurl = "sqlite:///{tmp_path}/controller.db"\n'
                      f'\n[poll]\ninterval_s = {poll_interval_s}\ntimeout_s = 5\n')
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("HOSTPLANE_")}
    cli = os.path.join(VENV_BIN, "hostplane-controller")
    subprocess.run([cli, "--config", str(config), "db", "upgrade"], env=environ, check=True,
                   capture_output=True, timeout=120)
    url = f"http://127.0.0.1:{port}"
    with serving([cli, "--config", str(config), "serve"], url + "/v1/health", environ,
                 tmp_path / "controller.log"):
        yield {"url": url, "token": token, "auth": {"Authorization": f"Bearer {token}"}}
