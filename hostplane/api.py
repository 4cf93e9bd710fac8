"""Request parsing and the OpenAPI document, both driven by the same pydantic models.

Views declare their body and answer with `@describe(...)`; `parse_body` validates the
JSON against the model (400 with every problem listed, nothing changed); and
`openapi_document` walks the app's URL map, so the published description is generated
from the code that serves it rather than maintained by hand.
"""

import json
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
# OpenAPI 3.1 allows only these characters in a component's name.
_COMPONENT_NAME = re.compile(r"[A-Za-z0-9._-]+")
# Path parameters whose form is the same on every route (VM, network and group names).
_PATH_SCHEMAS = {"name": {"type": "string", "pattern": OBJECT_NAME.pattern}}
_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content",
                304: "Not modified", 400: "Bad input", 401: "Missing or wrong token",
                403: "Not allowed for this token", 404: "No such object",
                409: "Conflict", 422: "Cannot be placed", 501: "Not supported on this host",
                503: "A dependency is down"}


# No body of either API nests deeper than this; a deeper one is refused before it is
# parsed, so it never reaches the parser's recursion limit.
MAX_JSON_DEPTH = 32
# C0 controls and DEL: never part of a name, id or sentence either API takes, and NUL
# cannot even be stored by PostgreSQL.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# Linear-time, whatever the body: escapes out first, then strings (no quote inside).
_JSON_ESCAPE = re.compile(r"\\.", re.S)
_JSON_STRING = re.compile(r'"[^"]*"')
_JSON_BRACKETS = re.compile(r"[\[\]{}]")


def parse_body(model, allow_empty=False):
    """The request's JSON body validated as `model`, or a 400 naming every problem.
    `model` may also be a function choosing the model from the parsed body (a `type`).

    The body is read as JSON whatever its Content-Type (tokens are bearer headers, not
    cookies, so no browser form can send one on another site's behalf)."""
    _refuse_cut_body()
    raw = request.get_data(cache=True)
    if not raw.strip() and allow_empty:
        data = {}
    else:
        data = _json_object(raw)
    if not isinstance(model, type):
        model = model(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(p) for p in err["loc"]) or "(body)",
                     "problem": err["msg"]} for err in exc.errors()]
        first = problems[0]
        raise BadRequest(f"{first['field']}: {first['problem']}", code="invalid_request",
                         details={"errors": problems}) from None


def _json_object(raw):
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    if not raw.strip():
        raise BadRequest("request body is empty; send a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body must be UTF-8 JSON", code="invalid_json") from None
    depth = _nesting(text)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"request body nests more than {MAX_JSON_DEPTH} levels deep",
                         code="invalid_json", details={"max_depth": MAX_JSON_DEPTH})
    try:
        data = json.loads(text)
    except ValueError as exc:
        hint = "" if request.is_json else " (send Content-Type: application/json)"
        raise BadRequest(f"request body is not valid JSON: {exc}{hint}",
                         code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(data).__name__}",
                         code="invalid_json")
    where = _control_character_at(data)
    if where is not None:
        raise BadRequest(f"{where}: control characters (NUL, newline, ...) are not allowed",
                         code="invalid_request", details={"field": where})
    return data


def _nesting(text):
    """How deep the arrays and objects of a JSON text nest (strings set aside)."""
    depth = deepest = 0
    for bracket in _JSON_BRACKETS.findall(_JSON_STRING.sub("", _JSON_ESCAPE.sub("", text))):
        depth += 1 if bracket in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_JSON_DEPTH:
                break   # deep enough to refuse; no need to read the rest
    return deepest


def _control_character_at(data):
    """The dotted path of the first string (key or value) holding a control character."""
    pending = [("", data)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if CONTROL_CHARACTERS.search(key):
                    return where[:100]
                pending.append((where, item))
        elif isinstance(value, list):
            pending.extend((f"{path}.{i}", item) for i, item in enumerate(value))
        elif isinstance(value, str) and CONTROL_CHARACTERS.search(value):
            return path or "(body)"
    return None


def refuse_control_characters(app):
    """400 for a path or query value with a control character, before authentication
    and before anything is looked up (a NUL would reach the database otherwise)."""
    def _check_request_strings():
        for name, value in (request.view_args or {}).items():
            if isinstance(value, str) and CONTROL_CHARACTERS.search(value):
                raise BadRequest(f"{name}: control characters are not allowed in a path",
                                 code="invalid_name" if name == "name" else "invalid_id",
                                 details={"field": name})
        for name, value in request.args.items(multi=True):
            if CONTROL_CHARACTERS.search(value):
                raise BadRequest(f"{name}: control characters are not allowed in query "
                                 "values", code="invalid_request", details={"field": name})
        for key in request.args:
            if CONTROL_CHARACTERS.search(key):
                raise BadRequest("control characters are not allowed in query names",
                                 code="invalid_request")
    app.before_request_funcs.setdefault(None, []).insert(0, _check_request_strings)


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


def describe(summary, body=None, responses=(200,), query=None, tags=(),
             media_type="application/json"):
    """Attach OpenAPI facts to a view; `query` maps parameter name to description, and
    `media_type` names what a success answers (a text one is described as a string)."""
    def mark(view):
        view.openapi = {"summary": summary, "body": body, "responses": tuple(responses),
                        "query": dict(query or {}), "tags": tuple(tags),
                        "media_type": media_type}
        return view
    return mark


def openapi_document(app, title, version, public=()):
    """OpenAPI 3.1 for every described route of `app`: pydantic writes JSON Schema 2020-12
    (`const`, `{"type": "null"}`), which is what 3.1 uses and 3.0 does not allow."""
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
    return {"openapi": "3.1.0", "info": {"title": title, "version": version},
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
            media_type = facts["media_type"]
            entry["content"] = {media_type: {"schema": {
                "type": "object" if media_type == "application/json" else "string"}}}
        operation["responses"][str(status)] = entry
    if public:
        operation["security"] = []
    return operation


def _schema_ref(model, schemas):
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return {"type": "object"}
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
        _add_component(schemas, name, sub)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _add_component(schemas, name, schema):
    """Refuse, where a test sees it, what would make the document unusable to client
    generators: a name OpenAPI does not allow (an unnamed `RootModel[...]`), or two
    different models of one name silently replacing each other."""
    if not _COMPONENT_NAME.fullmatch(name):
        raise ValueError(f"model {name!r} has no legal OpenAPI component name; "
                         "give it a class of its own")
    if schemas.get(name, schema) != schema:
        raise ValueError(f"two different models are named {name!r} in one API")
    schemas[name] = schema
