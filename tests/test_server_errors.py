"""What gunicorn answers itself, before a request reaches the app, in the JSON envelope.

A request line longer than gunicorn's limit, or one it cannot parse, is refused by
gunicorn, not Flask; a client reading `error.code` on every 4xx must get JSON there too.
Both services as an operator starts them (`hostplane-controller serve`,
`hostplane-agent serve`); tests/test_readme.py checks README's quick start the same way.
"""

import json
import socket
import sys
from urllib.parse import urlsplit

import pytest
import requests

from controller.db import upgrade
from tests.hardening import synthetic_agent_env
from tests.support import free_port
from tests.support.processes import ServedProcess
from tests.test_faults_controller_support import ControllerProcess


@pytest.fixture(scope="module", params=["controller", "agent"])
def served(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "controller":
        url = f"sqlite:///{tmp}/controller.db"
        upgrade(url)
        process = ControllerProcess(tmp, url, workers=1)
        yield process.url
        process.stop()
        return
    port = free_port()
    process = ServedProcess([sys.executable, "-m", "agent.cli", "serve", "--bind",
                             f"127.0.0.1:{port}"], synthetic_agent_env(tmp, "errors-host"),
                            tmp / "agent.log")
    process.spawn()
    url = f"http://127.0.0.1:{port}"
    process.wait_answering("the agent", lambda: _answers(url))
    yield url
    process.stop()


def _answers(url):
    try:
        return requests.get(url + "/v1/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_a_request_line_too_long_is_a_json_414(served):
    answer = requests.get(served + "/v1/vms/" + "a" * 9000, timeout=10)
    assert answer.status_code == 414
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"]["code"] == "uri_too_long"
    assert "too large" in answer.json()["error"]["message"]


def _raw(url, request):
    """(status line, head, body) of gunicorn's answer to the raw bytes `request`."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head, head
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    return head.split(b"\r\n")[0], head, json.loads(body)["error"]


def test_a_request_line_gunicorn_cannot_read_is_a_json_400(served):
    status, _, error = _raw(served, b"GET /v1/health HTTP/9.9 <script>\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 ")
    assert error["code"] == "bad_request" and error["details"] == {}


def test_a_transfer_coding_gunicorn_does_not_speak_is_a_json_501(served):
    status, _, error = _raw(served, b"POST /v1/vms HTTP/1.1\r\nHost: x\r\n"
                                    b"Transfer-Encoding: br\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 501 ")
    assert error["code"] == "not_implemented"

