"""Attach latency under gunicorn with 2 workers: every scrape sums both workers.

The histogram is prometheus-client's own, in its multiprocess mode (as `serve` runs it);
no state file of the agent's keeps it.
"""

import concurrent.futures
import glob
import os

from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.test_virt_support import GunicornAgent, lv, prefix, toml_config  # noqa: F401

NAME = "hostplane_agent_attach_seconds"


def attach_counts(families):
    """{outcome: count} of the attach histogram among `families`."""
    return {s.labels["outcome"]: s.value for f in families if f.name == NAME
            for s in f.samples if s.name == f"{NAME}_count"}


def test_attach_latency_of_both_workers_shows_in_every_scrape(tmp_path, lv, prefix):  # noqa: F811
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    agent = GunicornAgent(tmp_path, toml_config(tmp_path),
                          env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        sent, per_worker = 0, {}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            while len(per_worker) < 2 and sent < 400:   # until both workers timed some
                answers = list(pool.map(lambda _: agent.call(
                    "POST", f"/v1/vms/{prefix}-none/devices",
                    json={"type": "usb", "id": "dead:beef:NOPE"}).status_code, range(40)))
                assert set(answers) == {404}
                sent += len(answers)
                per_worker = {path: attach_counts(MultiProcessCollector.merge([path]))
                              for path in glob.glob(str(metrics_dir / "histogram_*.db"))}
                per_worker = {path: counts for path, counts in per_worker.items() if counts}
        assert len(per_worker) == 2, per_worker
        assert sum(sum(c.values()) for c in per_worker.values()) == sent
        for _ in range(6):   # whichever worker answers
            text = agent.call("GET", "/metrics").text
            assert sum(attach_counts(text_string_to_metric_families(text)).values()) == sent
        assert not os.path.exists(tmp_path / "state" / "attach-latency.json")
    finally:
        agent.stop()
