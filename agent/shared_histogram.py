"""A Prometheus histogram shared by every gunicorn worker of the agent.

Each worker has its own registry, so a plain `Histogram` would show a scrape only the
observations of the worker that answers it. The counts live instead in one JSON file
under `[host] state_dir`, changed under `flock` (as the inventory generation and the
attach lock are), and the collector reads that file at scrape time. Observations are a
few per attach, so a file write each is cheap; the counts are cumulative across agent
restarts, which Prometheus reads as a counter that never reset.
"""

import bisect
import contextlib
import fcntl
import json
import logging
import os

from prometheus_client.core import HistogramMetricFamily

from agent.atomic import write_json

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SharedHistogram:
    def __init__(self, path, name, documentation, labels, buckets=LATENCY_BUCKETS):
        self.path, self.name, self.documentation = path, name, documentation
        self.labels, self.buckets = tuple(labels), tuple(buckets)

    def observe(self, value, **labels):
        """Add one observation; a metrics file that cannot be written never fails the caller."""
        key = json.dumps([str(labels[name]) for name in self.labels])
        try:
            with self._locked():
                series = self._read()
                counts, total, count = series.get(key, ([0] * len(self.buckets), 0.0, 0))
                index = bisect.bisect_left(self.buckets, value)
                if index < len(counts):
                    counts[index] += 1
                series[key] = (counts, total + value, count + 1)
                self._write(series)
        except OSError as exc:
            log.warning("could not record %s: %s", self.name, exc)

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for key, (counts, total, count) in sorted(self._read().items()):
            cumulative, running = [], 0
            for bound, bucket in zip(self.buckets, counts):
                running += bucket
                cumulative.append((_bound(bound), running))
            cumulative.append(("+Inf", count))
            family.add_metric(json.loads(key), cumulative, total)
        yield family

    # --- helpers ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".lock", "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}
        return {key: tuple(value) for key, value in data.items()
                if isinstance(value, list) and len(value) == 3
                and len(value[0]) == len(self.buckets)}

    def _write(self, series):
        write_json(self.path, series)


def _bound(value):
    return repr(float(value))
