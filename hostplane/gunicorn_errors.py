"""gunicorn's settings module for both services (`-c python:hostplane.gunicorn_errors`).

It sets no setting. Importing it makes the few answers gunicorn writes itself, before a
request reaches the app (a request line or headers too long, a malformed request line),
use the API's JSON error envelope instead of an HTML page, so a client that reads
`error.code` on every 4xx is not handed HTML for these. gunicorn writes them all through
`gunicorn.util.write_error`, which its workers look up at each call. (Given `--config`,
gunicorn no longer reads a `gunicorn.conf.py` from the working directory.)
"""

import json
from http import HTTPStatus

from gunicorn import util

from hostplane.errors import code_for_reason


def write_json_error(sock, status, reason, message):
    if reason == "Bad Request" and int(status) != 400:   # gunicorn's phrase for its 501
        reason = HTTPStatus(int(status)).phrase
    body = json.dumps({"error": {"code": code_for_reason(reason),
                                 "message": f"{reason}: {message}" if message else reason,
                                 "details": {}}}).encode()
    head = (f"HTTP/1.1 {int(status)} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_json_error
