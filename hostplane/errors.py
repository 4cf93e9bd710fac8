"""The JSON error envelope shared by agent and controller.

Every non-2xx answer is `{"error": {"code", "message", "details"}}`. Views raise
`ApiError` (or a subclass); one set of handlers renders it, so no view needs its own
try/except, and nothing a caller can cause becomes a 500.
"""

import logging

from flask import jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message, code=None, details=None, status=None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.details = details or {}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Unplaceable(ApiError):
    status, code = 422, "unplaceable"


class NotImplementedHere(ApiError):
    status, code = 501, "not_implemented"


class DependencyDown(ApiError):
    status, code = 503, "dependency_unavailable"


class DatabaseUnavailable(DependencyDown):
    """The controller's database is locked past its busy timeout, or unreachable."""
    code = "database_unavailable"
    retry_after_s = 5


def code_for_reason(reason):
    """An HTTP reason phrase as an error code: "URI Too Long" → "uri_too_long"."""
    return (reason or "error").lower().replace(" ", "_").replace("-", "_")


def envelope(status, code, message, details=None):
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


def register_error_handlers(app):
    @app.errorhandler(ApiError)
    def _api_error(exc):
        return envelope(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(HTTPException)
    def _http_error(exc):
        response = envelope(exc.code or 500, code_for_reason(exc.name),
                            exc.description or exc.name)
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc):
        log.exception("unhandled error")
        return envelope(500, "internal_error", "internal error; see the service log")
