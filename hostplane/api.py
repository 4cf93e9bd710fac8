"""Request parsing and the OpenAPI document, both driven by the same pydantic models.

Views declare their body and answer with `@describe(...)`; `parse_body` validates the
JSON against the model (400 with every problem listed, nothing changed); and
`openapi_document` walks the app's URL map, so the published description is generated
from the code that serves it rather than maintained by hand.
"""

import re

from flask import current_app, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from hostplane.core.ids import OBJECT_NAME
from hostplane.core.ids import InvalidId
from hostplane.errors import BadRequest

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "details"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "details": {"type": "object"}},
    }},
}
# Path parameters whose form is the same on every route (VM, network and group names).
_PATH_SCHEMAS = {"name": {"type": "string", "pattern": OBJECT_NAME.pattern}}
_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content",
                304: "Not modified", 400: "Bad input", 401: "Missing or wrong token",
                403: "Not allowed for this token", 404: "No such object",
                409: "Conflict", 422: "Cannot be placed", 501: "Not supported on this host",
                503: "A dependency is down"}


def parse_body(model, allow_empty=False):
    """The request's JSON body validated as `model`, or a 400 naming every problem.
    A body that parses as a JSON object is taken whatever its Content-Type."""
    _refuse_cut_body()
    # Whatever the Content-Type says (curl -d sends a form type): tokens are bearer
    # headers, not cookies, so a body from a form post cannot carry anyone's authority.
    data = request.get_json(force=True, silent=True)
    if data is None:
        if allow_empty and not request.get_data():
            data = {}
        else:
            raise BadRequest("request body is not valid JSON" if request.get_data() else
                             "request body is empty; send a JSON object", code="invalid_json")
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(p) for p in err["loc"]) or "(body)",
                     "problem": err["msg"]} for err in exc.errors()]
        first = problems[0]
        raise BadRequest(f"{first['field']}: {first['problem']}", code="invalid_request",
                         details={"errors": problems}) from None


def _refuse_cut_body():
    """413 for a chunked body that reached the limit: werkzeug stops reading there
    without a word, which would otherwise judge the first max_body_kb as the whole body."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and request.content_length is None and len(request.get_data()) >= limit:
        raise RequestEntityTooLarge()


def checked(check, *args, code="invalid_id"):
    """`check(*args)` from hostplane.core.ids, its InvalidId answered as a 400 `code`."""
    try:
        return check(*args)
    except InvalidId as exc:
        raise BadRequest(str(exc), code=code) from None


def describe(summary, body=None, responses=(200,), query=None, tags=()):
    """Attach OpenAPI facts to a view; `query` maps parameter name to description."""
    def mark(view):
        view.openapi = {"summary": summary, "body": body, "responses": tuple(responses),
                        "query": dict(query or {}), "tags": tuple(tags)}
        return view
    return mark


def openapi_document(app, title, version, public=()):
    """OpenAPI 3.0 for every described route of `app`."""
    paths, schemas = {}, {"Error": _ERROR_SCHEMA}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        facts = getattr(view, "openapi", None)
        if facts is None:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(
                rule, method, facts, schemas, rule.endpoint in public)
    return {"openapi": "3.0.3", "info": {"title": title, "version": version},
            "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]}


def _operation(rule, method, facts, schemas, public):
    operation = {"summary": facts["summary"], "operationId": f"{rule.endpoint}.{method.lower()}",
                 "responses": {}}
    if facts["tags"]:
        operation["tags"] = list(facts["tags"])
    params = [{"name": arg, "in": "path", "required": True,
               "schema": dict(_PATH_SCHEMAS.get(arg, {"type": "string"}))}
              for arg in sorted(rule.arguments)]
    params += [{"name": name, "in": "query", "required": False, "description": text,
                "schema": {"type": "string"}} for name, text in facts["query"].items()]
    if params:
        operation["parameters"] = params
    body = facts["body"]
    if body is not None and method in ("POST", "PUT", "PATCH"):
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _schema_ref(body, schemas)}}}
    statuses = set(facts["responses"]) | {400, 404}
    if not public:
        statuses.add(401)
    if body is not None:
        statuses.add(400)
    for status in sorted(statuses):
        entry = {"description": _STATUS_TEXT.get(status, "Answer")}
        if status >= 400:
            entry["content"] = {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}
        elif status not in (204, 304):
            entry["content"] = {"application/json": {"schema": {"type": "object"}}}
        operation["responses"][str(status)] = entry
    if public:
        operation["security"] = []
    return operation


def _schema_ref(model, schemas):
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return {"type": "object"}
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}
