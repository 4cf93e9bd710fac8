"""Helpers every test module shares: free ports, waiting for a condition or a URL.

Deadlines here only stop a broken run from hanging; nothing is a timing test.
"""

import socket
import threading
import time

import requests


def all_at_once(count, work):
    """`work(i)` for i in range(count), each in its own thread, all released together by
    a barrier (the racing callers of the race tests); their results, in index order."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def run(index):
        barrier.wait()
        results[index] = work(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def free_port():
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.1):
    """`predicate()`'s first truthy value, or its (falsy) value once `timeout` s passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def wait_until(what, check, timeout=90, every=0.1):
    """Poll `check()` until it returns a truthy value, and return it; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(every)


def wait_for_url(url, timeout=60, process=None, verify=True):
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
