"""The operator's dashboard at `GET /`: one static page over the JSON API.

The page carries no data, so it and its assets are public (`PUBLIC_ENDPOINTS`); the page
asks for a token and sends it as a bearer token on every API call, so what it shows and
what it may change are exactly what that token may see and change through the API.
"""

import os

from flask import Blueprint, send_from_directory

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
bp = Blueprint("dashboard", __name__, static_folder=STATIC, static_url_path="/ui")
PUBLIC_ENDPOINTS = ("dashboard.index", "dashboard.static")


@bp.get("/")
def index():
    response = send_from_directory(STATIC, "dashboard.html", max_age=0)
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
