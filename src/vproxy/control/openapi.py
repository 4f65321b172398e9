"""The REST surface of the HTTP controller, derived from the grammar tables.

Owns the route table (which path and method maps to which grammar form), how a URL
path resolves to a route, the JSON Schema of every parameter, request body and reply,
and the OpenAPI 3.1 document built from them. Everything here is computed from
``GRAMMAR``, so the document cannot disagree with what the handlers accept: the
handlers in ``http.py`` resolve paths and check bodies with these same tables.

URL layout (``T`` a resource type by its long name, parents outermost first)::

    /api/v1/module/P1/N1/.../T           GET list, POST add (attach under a parent)
    /api/v1/module/P1/N1/.../T/NAME      GET one object, PUT update, DELETE remove
    /api/v1/module/P1/N1/.../T/NAME/detail   GET the object with its children
    /api/v1/module/P1/N1/.../T/detail    GET list-detail of an observable type

Must not do I/O, import aiohttp or anything from ``vproxy.net``, or run commands.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from vproxy.control.command import (
    GRAMMAR,
    Action,
    Form,
    NameUse,
    ParamSpec,
    ResourceType,
    ValueKind,
    forms_for,
)
from vproxy.control.command.grammar import NAME_RULES, RESERVED_WORDS, NameKind
from vproxy.control.reply import JsonValue

__all__ = [
    "API_PREFIX",
    "COUNTER_TYPES",
    "MODULE_PREFIX",
    "ROUTES",
    "Operation",
    "Route",
    "Shape",
    "body_schema",
    "chain_path",
    "children_of",
    "name_schema",
    "openapi_document",
    "param_schema",
    "top_level_types",
]

API_PREFIX: Final = "/api/v1"
MODULE_PREFIX: Final = API_PREFIX + "/module"

COUNTER_TYPES: Final[frozenset[ResourceType]] = frozenset(
    {ResourceType.BYTES_IN, ResourceType.BYTES_OUT, ResourceType.ACCEPTED_CONN_COUNT}
)
"""Observable types whose ``list`` answers an integer rather than names."""

DETAIL_SEGMENT: Final = "detail"

# Code points the parser refuses in paths and secrets (values.py: has_control_char).
_NO_CONTROL = "[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]"

_PROTOCOL_PATTERN = "[a-z0-9][a-z0-9/._-]{0,63}"
_MAX_PATH = 4096
_MAX_SECRET = 256


def _anchored(pattern: str) -> str:
    """A whole-string pattern; ``(?!\\n)`` because Python's ``$`` (which Python JSON
    Schema validators use) also matches before a final newline, and ECMA's does not."""
    return f"^(?:{pattern})$(?!\\n)"


class Shape(enum.Enum):
    """What the last segments of a module path address."""

    COLLECTION = "collection"  # .../T
    ITEM = "item"  # .../T/NAME
    ITEM_DETAIL = "item-detail"  # .../T/NAME/detail
    LIST_DETAIL = "list-detail"  # .../T/detail (observable types)


@dataclass(frozen=True, slots=True)
class Operation:
    """One HTTP method on a route and the grammar form it runs.

    Attributes:
        method: The HTTP method.
        action: The action of the command built.
        form: The grammar form; its params and flags are the body fields.
        force_form: For DELETE where both ``remove`` and ``force-remove`` exist: the
            force-remove form, selected by the query ``force=true``.
    """

    method: str
    action: Action
    form: Form
    force_form: Form | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A path shape under ``/api/v1/module`` and its methods.

    Attributes:
        type: The resource type addressed.
        chain: The parent types, nearest first (as in ``Command.parents``).
        shape: Which kind of path.
        operations: The methods allowed, by name.
    """

    type: ResourceType
    chain: tuple[ResourceType, ...]
    shape: Shape
    operations: Mapping[str, Operation]

    @property
    def template(self) -> str:
        """The OpenAPI path template, e.g. ``/api/v1/module/upstream/{upstream}/server-group``."""
        base = MODULE_PREFIX + chain_path(self.chain) + "/" + self.type.value
        if self.shape is Shape.COLLECTION:
            return base
        if self.shape is Shape.ITEM:
            return base + "/{name}"
        if self.shape is Shape.ITEM_DETAIL:
            return base + "/{name}/" + DETAIL_SEGMENT
        return base + "/" + DETAIL_SEGMENT

    @property
    def allow(self) -> str:
        """The ``Allow`` header value."""
        return ", ".join(self.operations)


def chain_path(chain: tuple[ResourceType, ...]) -> str:
    """The path segments of a parent chain, outermost first, with template variables.

    Args:
        chain: Parent types, nearest first.

    Returns:
        E.g. ``/server-group/{server-group}/server/{server}``; ``""`` for no parents.
    """
    return "".join(f"/{t.value}/{{{t.value}}}" for t in reversed(chain))


def _form(type_: ResourceType, action: Action, chain: tuple[ResourceType, ...]) -> Form | None:
    for form in forms_for(type_, action):
        if chain in form.parents:
            return form
    return None


def _build_routes() -> dict[tuple[ResourceType, tuple[ResourceType, ...], Shape], Route]:
    routes: dict[tuple[ResourceType, tuple[ResourceType, ...], Shape], Route] = {}

    def put(
        type_: ResourceType,
        chain: tuple[ResourceType, ...],
        shape: Shape,
        ops: list[Operation],
    ) -> None:
        if ops:
            routes[(type_, chain, shape)] = Route(
                type_, chain, shape, {op.method: op for op in ops}
            )

    for type_, spec in GRAMMAR.items():
        chains = tuple(dict.fromkeys(chain for form in spec.forms for chain in form.parents))
        for chain in chains:
            lst = _form(type_, Action.LIST, chain)
            detail = _form(type_, Action.LIST_DETAIL, chain)
            add = _form(type_, Action.ADD, chain)
            update = _form(type_, Action.UPDATE, chain)
            remove = _form(type_, Action.REMOVE, chain)
            force = _form(type_, Action.FORCE_REMOVE, chain)

            collection: list[Operation] = []
            if lst is not None:
                collection.append(Operation("GET", Action.LIST, lst))
            if add is not None:
                collection.append(Operation("POST", Action.ADD, add))
            put(type_, chain, Shape.COLLECTION, collection)

            item: list[Operation] = []
            named_detail = detail is not None and detail.name is not NameUse.NONE
            if named_detail and detail is not None:
                item.append(Operation("GET", Action.LIST_DETAIL, detail))
            if update is not None:
                item.append(Operation("PUT", Action.UPDATE, update))
            if remove is not None:
                item.append(Operation("DELETE", Action.REMOVE, remove, force))
            elif force is not None:
                item.append(Operation("DELETE", Action.FORCE_REMOVE, force))
            put(type_, chain, Shape.ITEM, item)

            if detail is not None and named_detail:
                put(type_, chain, Shape.ITEM_DETAIL, [Operation("GET", Action.LIST_DETAIL, detail)])
            elif detail is not None:
                put(type_, chain, Shape.LIST_DETAIL, [Operation("GET", Action.LIST_DETAIL, detail)])
    return routes


ROUTES: Final[Mapping[tuple[ResourceType, tuple[ResourceType, ...], Shape], Route]] = (
    _build_routes()
)
"""Every module route, keyed by (type, parent chain nearest first, shape)."""


def top_level_types() -> tuple[ResourceType, ...]:
    """Configured (not observable) types listed without a parent, in grammar order."""
    return tuple(
        t
        for t, spec in GRAMMAR.items()
        if not spec.observable and (t, (), Shape.ITEM_DETAIL) in ROUTES
    )


def children_of(type_: ResourceType, chain: tuple[ResourceType, ...]) -> tuple[ResourceType, ...]:
    """Configured types that can be listed in detail under a resource.

    Args:
        type_: The resource's type.
        chain: The resource's own parent chain, nearest first.

    Returns:
        The child types ``C`` for which ``list-detail C in type_ NAME [in ...]`` exists.
    """
    inner = (type_, *chain)
    return tuple(
        t
        for t, spec in GRAMMAR.items()
        if not spec.observable and (t, inner, Shape.ITEM_DETAIL) in ROUTES
    )


# ---------------------------------------------------------------------------- schemas


def name_schema(kind: NameKind) -> dict[str, JsonValue]:
    """The JSON Schema of a resource name of ``kind`` (as the parser checks it)."""
    rule = NAME_RULES[kind]
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": rule.max_length,
        "pattern": _anchored(rule.pattern.pattern),
        "not": {"enum": list[JsonValue](sorted(RESERVED_WORDS))},
        "description": rule.description,
    }


_NAME_SCHEMAS: Final[Mapping[NameKind, str]] = {NameKind.NAME: "Name", NameKind.ID: "Id"}


def _name_ref(kind: NameKind) -> dict[str, JsonValue]:
    return _ref(_NAME_SCHEMAS[kind])


def _pattern_schema() -> dict[str, JsonValue]:
    return {
        "type": "string",
        "minLength": 2,
        "pattern": _anchored("/[\\s\\S]*/"),
        "description": "a /regex/ selecting every name it matches (percent-encode the slashes)",
    }


def _path_schema(*, no_comma: bool) -> dict[str, JsonValue]:
    char = "[^,\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]" if no_comma else _NO_CONTROL
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": _MAX_PATH,
        "pattern": _anchored(char + "+"),
    }


def param_schema(spec: ParamSpec) -> dict[str, JsonValue]:
    """The JSON Schema of one parameter's value in a request body.

    Args:
        spec: The parameter.

    Returns:
        A schema with the same type, range and enum checks the HTTP controller
        applies before handing the value to the grammar's own value reader.
    """
    kind = spec.kind
    schema: dict[str, JsonValue]
    if kind is ValueKind.INT:
        schema = {"type": "integer", "minimum": spec.minimum, "maximum": spec.maximum}
    elif kind is ValueKind.CHOICE:
        members = [m.value for m in spec.choices] if spec.choices is not None else []
        schema = {"type": "string", "enum": list(members)}
    elif kind in (ValueKind.NAME, ValueKind.TOKEN):
        schema = _name_ref(NameKind.NAME)
    elif kind is ValueKind.NAME_LIST:
        schema = {
            "type": "array",
            "items": _name_ref(NameKind.NAME),
            "minItems": 1,
            "uniqueItems": True,
        }
    elif kind is ValueKind.PROTOCOL:
        schema = {"type": "string", "pattern": _anchored(_PROTOCOL_PATTERN)}
    elif kind is ValueKind.PORT_RANGE:
        schema = {"type": "string", "pattern": _anchored("[0-9]{1,10},[0-9]{1,10}")}
    elif kind is ValueKind.JSON_OBJECT:
        schema = {"type": "object", "additionalProperties": {"type": "string"}}
    elif kind is ValueKind.PATH:
        schema = _path_schema(no_comma=False)
    elif kind is ValueKind.PATH_LIST:
        schema = {"type": "array", "items": _path_schema(no_comma=True), "minItems": 1}
    elif kind is ValueKind.SECRET:
        schema = {
            "type": "string",
            "minLength": 1,
            "maxLength": _MAX_SECRET,
            "pattern": _anchored(_NO_CONTROL + "+"),
        }
    else:  # ADDRESS, IP, NETWORK: checked by the grammar's value readers
        schema = {"type": "string"}
    schema["description"] = f"{spec.doc} ({spec.value_help})" if spec.doc else spec.value_help
    default = _json_default(spec)
    if default is not None:
        schema["default"] = default
    return schema


def _json_default(spec: ParamSpec) -> JsonValue:
    if spec.default is None:
        return None
    if spec.kind is ValueKind.INT:
        return int(spec.default)
    if spec.kind is ValueKind.JSON_OBJECT:
        value: JsonValue = json.loads(spec.default)
        return value
    if spec.kind in (ValueKind.NAME_LIST, ValueKind.PATH_LIST):
        return list(spec.default.split(","))
    return spec.default


def body_schema(type_: ResourceType, form: Form) -> dict[str, JsonValue]:
    """The JSON Schema of the request body of an ``add`` or ``update`` form.

    Fields are the parameters by their long names and the flags as booleans; ``add``
    also takes ``"name"``. Required parameters are required; ``exactly_one_of``,
    exclusive flags and "at least one change" are expressed with ``oneOf``/``not``/
    ``anyOf``. Unknown fields are refused.

    Args:
        type_: The resource type.
        form: An ADD or UPDATE form of ``type_``.

    Returns:
        The schema.
    """
    properties: dict[str, JsonValue] = {}
    required: list[JsonValue] = []
    if form.action is Action.ADD:
        properties["name"] = _name_ref(GRAMMAR[type_].name_kind)
        required.append("name")
    for spec in form.params:
        properties[spec.name] = param_schema(spec)
        if spec.required:
            required.append(spec.name)
    for flag in form.flags:
        properties[flag.name] = {"type": "boolean", "description": flag.doc, "default": False}
    schema: dict[str, JsonValue] = {
        "type": "object",
        "description": form.summary,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    all_of: list[JsonValue] = []
    for group in form.exactly_one_of:
        all_of.append({"oneOf": [{"required": [name]} for name in group]})
    for flags in form.exclusive_flags:
        all_of.append(
            {
                "not": {
                    "required": list(flags),
                    "properties": {name: {"const": True} for name in flags},
                }
            }
        )
    if form.needs_change:
        any_of: list[JsonValue] = [{"required": [spec.name]} for spec in form.params]
        any_of += [
            {"required": [flag.name], "properties": {flag.name: {"const": True}}}
            for flag in form.flags
        ]
        all_of.append({"anyOf": any_of})
    if all_of:
        schema["allOf"] = all_of
    return schema


def _body_key(route: Route, op: Operation) -> str:
    parts = [route.type.value, op.action.value, *(f"in.{t.value}" for t in route.chain)]
    return ".".join(parts)


def _op_id(route: Route, op: Operation) -> str:
    verb = {
        (Shape.COLLECTION, "GET"): "list",
        (Shape.COLLECTION, "POST"): "add",
        (Shape.ITEM, "GET"): "get",
        (Shape.ITEM, "PUT"): "update",
        (Shape.ITEM, "DELETE"): "remove",
        (Shape.ITEM_DETAIL, "GET"): "get-detail",
        (Shape.LIST_DETAIL, "GET"): "list-detail",
    }[(route.shape, op.method)]
    return "-".join([verb, route.type.value, *(f"in-{t.value}" for t in route.chain)])


def _ref(name: str) -> dict[str, JsonValue]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: JsonValue) -> dict[str, JsonValue]:
    return {"application/json": {"schema": schema}}


def _errors() -> dict[str, JsonValue]:
    return {
        "4XX": {"$ref": "#/components/responses/Refused"},
        "5XX": {"$ref": "#/components/responses/Failed"},
    }


def _path_params(route: Route) -> list[JsonValue]:
    params: list[JsonValue] = []
    for t in reversed(route.chain):
        params.append({"$ref": f"#/components/parameters/{t.value}"})
    if route.shape in (Shape.ITEM, Shape.ITEM_DETAIL):
        kind = GRAMMAR[route.type].name_kind
        schema: JsonValue = _name_ref(kind)
        ops = route.operations.values()
        if any(op.form.name is NameUse.REQUIRED_OR_PATTERN for op in ops):
            schema = {"anyOf": [_name_ref(kind), _ref("Pattern")]}
        params.append(
            {
                "name": "name",
                "in": "path",
                "required": True,
                "description": f"the {route.type.value} (percent-encode '/')",
                "schema": schema,
            }
        )
    return params


def _success(route: Route, op: Operation) -> tuple[str, dict[str, JsonValue]]:
    if op.method == "POST":
        return "201", {"description": "created", "content": _json_content(_ref("Reply"))}
    if op.method in ("PUT", "DELETE"):
        return "200", {"description": "done", "content": _json_content(_ref("Reply"))}
    if route.shape is Shape.COLLECTION:
        schema = _ref("Count") if route.type in COUNTER_TYPES else _ref("Names")
        return "200", {"description": "the names or the count", "content": _json_content(schema)}
    if route.shape is Shape.LIST_DETAIL:
        schema = {"type": "array", "items": _ref("Detail")}
        return "200", {"description": "one object per item", "content": _json_content(schema)}
    what = "with its children" if route.shape is Shape.ITEM_DETAIL else "its settings"
    return "200", {"description": f"the object, {what}", "content": _json_content(_ref("Detail"))}


def _operation(route: Route, op: Operation) -> dict[str, JsonValue]:
    code, success = _success(route, op)
    responses: dict[str, JsonValue] = {code: success, **_errors()}
    out: dict[str, JsonValue] = {
        "operationId": _op_id(route, op),
        "summary": op.form.summary,
        "tags": [route.type.value],
        "responses": responses,
    }
    if op.method in ("POST", "PUT"):
        out["requestBody"] = {
            "required": True,
            "content": _json_content(_ref(_body_key(route, op))),
        }
    if op.force_form is not None:
        out["parameters"] = [
            {
                "name": "force",
                "in": "query",
                "required": False,
                "description": "force-remove: " + op.force_form.summary,
                "schema": {"type": "boolean", "default": False},
            }
        ]
    return out


def _components(bearer: bool) -> dict[str, JsonValue]:
    detail: dict[str, JsonValue] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}},
        "additionalProperties": True,
    }
    schemas: dict[str, JsonValue] = {
        "Error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "integer", "minimum": 400, "maximum": 599},
                "message": {"type": "string"},
            },
            "additionalProperties": False,
        },
        "Reply": {
            "description": "a reply of the command language: status text, integer, string, "
            "null or an array of replies",
            "type": ["string", "integer", "null", "array"],
            "items": _ref("Reply"),
        },
        "Names": {"type": "array", "items": {"type": "string"}},
        "Count": {"type": "integer", "minimum": 0},
        "Detail": detail,
        **{key: name_schema(kind) for kind, key in _NAME_SCHEMAS.items()},
        "Pattern": _pattern_schema(),
        "All": {
            "type": "object",
            "properties": {
                t.value: {"type": "array", "items": _ref("Detail")} for t in top_level_types()
            },
            "additionalProperties": False,
        },
        "Status": {
            "type": "object",
            "required": [
                "time",
                "listeners",
                "controllers",
                "upstreams",
                "server_groups",
                "transitions",
                "event_loops",
                "access_log",
                "sessions",
                "sessions_total",
            ],
            "properties": {
                "time": {"type": "number", "description": "seconds since the epoch"},
                "listeners": {"type": "array", "items": {"type": "object"}},
                "controllers": {"type": "array", "items": {"type": "object"}},
                "upstreams": {"type": "array", "items": {"type": "object"}},
                "server_groups": {"type": "array", "items": {"type": "object"}},
                "transitions": {"type": "array", "items": {"type": "object"}},
                "event_loops": {"type": "array", "items": {"type": "object"}},
                "access_log": {"type": ["object", "null"]},
                "sessions": {"type": "array", "items": {"type": "object"}},
                "sessions_total": {"type": "integer", "minimum": 0},
                "processes": {
                    "description": "only with workers N: each process by itself, the "
                    "master first (worker 0); accepted counts the process now in the slot",
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["worker", "up", "restarts", "sessions", "accepted"],
                        "properties": {
                            "worker": {"type": "integer", "minimum": 0},
                            "up": {"type": "boolean"},
                            "restarts": {"type": "integer", "minimum": 0},
                            "sessions": {"type": "integer", "minimum": 0},
                            "accepted": {"type": "integer", "minimum": 0},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
            "additionalProperties": False,
        },
    }
    for route in ROUTES.values():
        for op in route.operations.values():
            if op.method in ("POST", "PUT"):
                schemas[_body_key(route, op)] = body_schema(route.type, op.form)
    parents = {t for route in ROUTES.values() for t in route.chain}
    components: dict[str, JsonValue] = {
        "schemas": schemas,
        "responses": {
            "Refused": {
                "description": "refused; nothing changed",
                "content": _json_content(_ref("Error")),
            },
            "Failed": {
                "description": "not available in this build, or an internal error",
                "content": _json_content(_ref("Error")),
            },
        },
        "parameters": {
            t.value: {
                "name": t.value,
                "in": "path",
                "required": True,
                "description": f"the {t.value} (percent-encode '/')",
                "schema": _name_ref(GRAMMAR[t].name_kind),
            }
            for t in sorted(parents)
        },
    }
    if bearer:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return components


def openapi_document(*, bearer: bool, version: str = "0.1.0") -> dict[str, JsonValue]:
    """Build the OpenAPI 3.1 document of the HTTP controller.

    Args:
        bearer: Whether the controller requires a bearer token (then every operation
            but ``/healthz`` declares it).
        version: The API document's version.

    Returns:
        The document, ready for :func:`json.dumps`.
    """
    paths: dict[str, JsonValue] = {}
    for route in sorted(ROUTES.values(), key=lambda r: r.template):
        item: dict[str, JsonValue] = {
            op.method.lower(): _operation(route, op) for op in route.operations.values()
        }
        params = _path_params(route)
        if params:
            item["parameters"] = params
        paths[route.template] = item
    paths[MODULE_PREFIX + "/all"] = {
        "get": {
            "operationId": "list-all",
            "summary": "every configured resource, with its children",
            "responses": {
                "200": {"description": "by type", "content": _json_content(_ref("All"))},
                **_errors(),
            },
        }
    }
    paths[API_PREFIX + "/config"] = {
        "get": {
            "operationId": "list-config",
            "summary": "the current state as commands (System: list config); read-only",
            "responses": {
                "200": {
                    "description": "one command a line",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_errors(),
            },
        }
    }
    paths[API_PREFIX + "/status"] = {
        "get": {
            "operationId": "status",
            "summary": "what the dashboard shows: listeners, server groups with health, "
            "recent health transitions, event loops, sessions (up to 200)",
            "responses": {
                "200": {"description": "read now", "content": _json_content(_ref("Status"))},
                **_errors(),
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (text exposition format 0.0.4)",
            "responses": {
                "200": {
                    "description": "one sample a line",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_errors(),
            },
        }
    }
    paths[API_PREFIX + "/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "this document",
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": _json_content({"type": "object"})},
                **_errors(),
            },
        }
    }
    health: dict[str, JsonValue] = {
        "operationId": "healthz",
        "summary": "liveness; never needs a token",
        "responses": {
            "200": {"description": "alive", "content": _json_content(_ref("Health"))},
        },
    }
    if bearer:
        health["security"] = []
    paths["/healthz"] = {"get": health}
    doc: dict[str, JsonValue] = {
        "openapi": "3.1.0",
        "info": {
            "title": "vproxy HTTP controller",
            "version": version,
            "description": "The command language as REST + JSON. Errors are "
            '{"code": HTTP status, "message": text}; an error changes nothing.',
        },
        "paths": paths,
        "components": _components(bearer),
    }
    if bearer:
        doc["security"] = [{"bearer": []}]
    return doc
