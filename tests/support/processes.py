"""A service the tests run as operators do (gunicorn or `serve`), in its own session.

One wrapper for every agent and controller process the tests start: spawned with its
output in a log file, waited for until it answers, stopped (SIGTERM to the session, then
SIGKILL) or killed outright (a crash, no clean-up), its master and workers listed.
"""

import os
import signal
import subprocess

from tests.support import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ServedProcess:
    def __init__(self, command, env, log_path, netns=None):
        self.command = (["ip", "netns", "exec", netns] if netns else []) + list(command)
        self.env, self.log_path, self.process = env, log_path, None

    def spawn(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_answering(self, what, answers, timeout=60):
        """Wait until `answers()` is true; fail with the log if it never is or the
        process exits first."""
        def ready():
            assert self.process.poll() is None, f"{what} exited:\n" + self.log()
            return answers()
        try:
            wait_until(f"{what} to answer", ready, timeout=timeout)
        except AssertionError as exc:
            if "exited" in str(exc):
                raise
            raise AssertionError(f"{what} did not come up:\n" + self.log()) from None

    def pids(self):
        """The master and its workers."""
        pid = self.process.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
                return [pid] + [int(child) for child in handle.read().split()]
        except OSError:
            return [pid]

    def signal_all(self, signum):
        for pid in self.pids():
            os.kill(pid, signum)

    def kill(self):
        """SIGKILL the whole session (master and workers): a crash, no clean-up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self):
        """The last 3,000 characters the process wrote."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()[-3000:]
        except FileNotFoundError:
            return ""
