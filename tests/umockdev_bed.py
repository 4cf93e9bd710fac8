"""A umockdev testbed with a real agent inside it, and hot-plug driven from the test.

umockdev-run replays a recording but cannot inject events later; its library can, but
only from a process that runs under its preload library (libudev resolves `/sys`
paths). So `HotplugBed` starts this module as a driver process under the preload: it
builds the testbed (ctypes on libumockdev, no PyGObject needed), starts a real agent
(gunicorn) inside it, then adds and removes devices and sends the uevents a real
hot-plug would, on the test's command (JSON lines over a pipe).
"""

import ctypes
import json
import os
import subprocess
import sys
import tempfile

import requests

from tests.support import free_port
from tests.support.processes import ServedProcess

PRELOAD = "libumockdev-preload.so.0"


class Testbed:
    def __init__(self, recording=None):
        self._lib = ctypes.CDLL("libumockdev.so.0")
        self._lib.umockdev_testbed_new.restype = ctypes.c_void_p
        self._lib.umockdev_testbed_get_root_dir.restype = ctypes.c_char_p
        self._lib.umockdev_testbed_get_root_dir.argtypes = [ctypes.c_void_p]
        self._lib.umockdev_testbed_add_from_string.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        self._lib.umockdev_testbed_uevent.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                                      ctypes.c_char_p]
        self._lib.umockdev_testbed_remove_device.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._bed = self._lib.umockdev_testbed_new()
        self.root_dir = self._lib.umockdev_testbed_get_root_dir(self._bed).decode()
        if recording:
            with open(recording, encoding="utf-8") as handle:
                self.add(handle.read())

    def add(self, text):
        error = ctypes.c_void_p()
        if not self._lib.umockdev_testbed_add_from_string(self._bed, text.encode(),
                                                          ctypes.byref(error)):
            raise RuntimeError("umockdev could not load the recording")

    def uevent(self, device_path, action):
        self._lib.umockdev_testbed_uevent(self._bed, f"/sys{device_path}".encode(),
                                          action.encode())

    def remove(self, device_path):
        self._lib.umockdev_testbed_remove_device(self._bed, f"/sys{device_path}".encode())

    def environment(self):
        env = dict(os.environ)
        env["LD_PRELOAD"] = PRELOAD
        env["UMOCKDEV_DIR"] = self.root_dir
        return env


class AgentProcess(ServedProcess):
    """`gunicorn 'agent.app:create_app()'` on a loopback port, configured by environment."""

    def __init__(self, env, token, workers=1, timeout=60):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {token}"}
        log = tempfile.NamedTemporaryFile(prefix="gunicorn-agent-", suffix=".log", delete=False)
        log.close()
        super().__init__([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
                          "--workers", str(workers), "agent.app:create_app()"], env, log.name)
        self.spawn()
        try:
            self.wait_answering("the agent", self._answers, timeout=timeout)
        except AssertionError:
            self.stop()
            raise

    def _answers(self):
        try:
            return requests.get(self.url + "/v1/health", timeout=5) is not None
        except requests.RequestException:   # not listening yet, or worker still booting
            return False

    def get(self, path, **kwargs):
        kwargs.setdefault("headers", self.headers)
        return requests.get(self.url + path, timeout=10, **kwargs)

    def stop(self):
        """Stop it; what it wrote (its whole log)."""
        super().stop()
        if not os.path.exists(self.log_path):
            return ""   # stopped before
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            output = handle.read()
        os.unlink(self.log_path)
        return output


class HotplugBed:
    """Test side: a driver process holding the testbed and the agent inside it."""

    def __init__(self, recording, agent_env, token):
        env = dict(os.environ)
        env.update(agent_env)
        env["LD_PRELOAD"] = PRELOAD
        env.pop("UMOCKDEV_DIR", None)
        self.driver = subprocess.Popen(
            [sys.executable, "-m", "tests.umockdev_bed", recording],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        hello = json.loads(self.driver.stdout.readline() or "{}")
        if "url" not in hello:
            raise RuntimeError(f"testbed driver failed: {hello}")
        self.url = hello["url"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path, **kwargs):
        kwargs.setdefault("headers", self.headers)
        return requests.get(self.url + path, timeout=10, **kwargs)

    def plug(self, recording_text, device_path):
        return self._command({"op": "add", "text": recording_text, "path": device_path})

    def unplug(self, device_path):
        return self._command({"op": "remove", "path": device_path})

    def _command(self, command):
        self.driver.stdin.write(json.dumps(command) + "\n")
        self.driver.stdin.flush()
        answer = json.loads(self.driver.stdout.readline() or "{}")
        if not answer.get("ok"):
            raise RuntimeError(f"testbed driver: {answer}")
        return answer

    def close(self):
        if self.driver.poll() is None:
            self.driver.stdin.close()
            try:
                self.driver.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.driver.kill()


def _drive(recording):
    """Driver side (runs under the preload): serve one agent, obey commands."""
    bed = Testbed(recording)
    env = dict(os.environ)
    env["UMOCKDEV_DIR"] = bed.root_dir
    agent = AgentProcess(env, env.get("HOSTPLANE_SERVER_TOKEN", ""))
    print(json.dumps({"url": agent.url, "root": bed.root_dir}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "add":
                bed.add(command["text"])
                bed.uevent(command["path"], "add")
            elif command["op"] == "remove":
                bed.uevent(command["path"], "remove")
                bed.remove(command["path"])
            print(json.dumps({"ok": True}), flush=True)
    finally:
        agent.stop()


if __name__ == "__main__":
    _drive(sys.argv[1])
