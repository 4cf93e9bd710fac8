"""Write the synthetic hosts' umockdev recordings into tests/data/.

    .venv/bin/python -m tests.data.regenerate

The recordings are committed so a reader can open them; `test_recordings_match_generator`
fails when they drift from tests/hosts.py.
"""

import os

from tests.hosts import gpu_server, q35_node, small_gpu_host
from tests.synthetic import write_umockdev

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDINGS = {"small-gpu-host.umockdev": small_gpu_host, "q35-node.umockdev": q35_node,
              "gpu-server.umockdev": gpu_server}


def main():
    for name, build in RECORDINGS.items():
        path = write_umockdev(build(), os.path.join(HERE, name))
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
