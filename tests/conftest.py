"""Shared fixtures: agent configs pointed at test trees, Flask test clients."""

import copy
import os
import shutil
import subprocess

import pytest

from agent.config import DEFAULTS as AGENT_DEFAULTS

DATA = os.path.join(os.path.dirname(__file__), "data")
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def agent_config(tmp_path, **sections):
    """An agent config for tests: token set, state under tmp_path, sections overridden."""
    config = copy.deepcopy(AGENT_DEFAULTS)
    config["server"]["token"] = TOKEN
    config["host"].update({"id": "test-host", "state_dir": str(tmp_path / "state"),
                           "watch_udev": False})
    for section, values in sections.items():
        config[section].update(values)
    return config


def have(command):
    return shutil.which(command) is not None


def libvirtd_running():
    return subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode == 0


@pytest.fixture
def auth():
    return dict(AUTH)
