"""One boot id per agent start, whichever gunicorn worker answers.

The controller resyncs a host (facts and a full device fetch) whenever the boot id it
reads differs from the one on record, so two workers with ids of their own made every
other poll look like an agent restart. Real gunicorn, two workers: each worker is made to
answer in turn by stopping the other (SIGSTOP), a killed worker is respawned by the
master, and the whole agent is restarted.
"""

import os
import signal

from tests.support import free_port, wait_until
from tests.test_faults_controller_support import AgentProcess


def test_workers_share_the_boot_id_and_only_a_new_agent_start_changes_it(tmp_path):
    agent = AgentProcess(tmp_path, "boot-host", f"127.0.0.1:{free_port()}", workers=2)
    try:
        workers = wait_until("two workers", lambda: agent.pids()[1:] if len(agent.pids()) == 3
                             else None, timeout=60)
        first = {worker: _answer_from(agent, worker, workers) for worker in workers}
        assert len(set(first.values())) == 1, first
        boot_id = first[workers[0]]
        assert len(boot_id) == 32 and int(boot_id, 16) >= 0

        os.kill(workers[0], signal.SIGKILL)   # the master respawns it: same agent start
        respawned = wait_until("a respawned worker", lambda: [
            pid for pid in agent.pids()[1:] if pid not in workers] or None, timeout=60)
        now = agent.pids()[1:]
        assert _answer_from(agent, respawned[0], now) == boot_id

        agent.kill()
        agent.start()                          # a new start: a new id, shared again
        workers = wait_until("two workers", lambda: agent.pids()[1:] if len(agent.pids()) == 3
                             else None, timeout=60)
        again = {worker: _answer_from(agent, worker, workers) for worker in workers}
        assert len(set(again.values())) == 1 and boot_id not in again.values(), again
    finally:
        agent.stop()


def _answer_from(agent, worker, workers):
    """The boot id as `worker` answers it: every other worker is stopped meanwhile."""
    others = [pid for pid in workers if pid != worker]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        status, body = agent.get("/v1/health")
        assert status == 200, body
        return body["boot_id"]
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)
