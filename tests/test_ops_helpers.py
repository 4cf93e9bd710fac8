"""Helpers for the operations tests (no tests here)."""

import os
import socket
import time

import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv/bin")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url, timeout=60, process=None, verify=True):
    """Poll `url` until it answers 200 (or `process` dies); `verify`: CA bundle for https."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=5, verify=verify).status_code == 200:
                return
        except requests.RequestException:   # not listening yet, or still booting
            pass
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server behind {url} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout} s")
        time.sleep(0.3)
