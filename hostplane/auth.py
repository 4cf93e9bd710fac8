"""Bearer-token authentication, compared in constant time.

`install(app, resolve, public)` makes every endpoint except those named in `public`
require `Authorization: Bearer <token>`; `resolve(token)` (None when no token was sent)
returns the principal (any truthy value, kept in `flask.g.principal`) or None.
"""

import hmac

from flask import g, request

from hostplane.errors import Unauthorized


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
