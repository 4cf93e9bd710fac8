"""Bearer-token authentication, compared in constant time, and the TLS requirement.

`install(app, resolve, public)` makes every endpoint except those named in `public`
require `Authorization: Bearer <token>`; `resolve(token)` (None when no token was sent)
returns the principal (any truthy value, kept in `flask.g.principal`) or None.
`require_tls(app)` refuses every request that did not arrive over TLS, health included,
so a token is never accepted in clear text.
"""

import hmac
import ssl

from flask import g, request

from hostplane.errors import ApiError, Unauthorized


def token_matches(given, expected):
    """Constant-time comparison that never matches an unset token."""
    if not expected or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def find_principal(given, principals):
    """Look `given` up in {token: principal}, touching every entry so timing leaks nothing."""
    found = None
    for token, principal in principals.items():
        if token_matches(given, token):
            found = principal
    return found


def bearer_token():
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def install(app, resolve, public=()):
    public = frozenset(public)

    @app.before_request
    def _authenticate():
        if request.endpoint in public or request.endpoint is None:
            return None
        principal = resolve(bearer_token())
        if not principal:
            raise Unauthorized("missing or wrong bearer token",
                               details={"hint": "send 'Authorization: Bearer <token>'"})
        g.principal = principal
        return None


def arrived_over_tls(environ):
    """True when the client's own connection is TLS.

    Under gunicorn the socket itself is asked: `wsgi.url_scheme` alone would believe an
    `X-Forwarded-Proto: https` header sent in clear text from loopback.
    """
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        return isinstance(sock, ssl.SSLSocket)
    return environ.get("wsgi.url_scheme") == "https"


def require_tls(app):
    def _refuse_clear_text():
        if not arrived_over_tls(request.environ):
            raise ApiError("this server requires TLS; use https://", code="tls_required",
                           status=403, details={"require_tls": True})

    # First of all before-request hooks: answered before the token is even looked at.
    app.before_request_funcs.setdefault(None, []).insert(0, _refuse_clear_text)
