"""HTTP controller without sockets: paths -> routes, JSON -> Command, and the OpenAPI
document agreeing with what the mapping accepts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from vproxy.control.command import (
    GRAMMAR,
    Action,
    Command,
    CommandError,
    Form,
    ParamSpec,
    ResourceType,
    ValueKind,
    parse,
)
from vproxy.control.http import (
    MAX_BODY,
    MAX_JSON_DEPTH,
    HttpError,
    ModuleRequest,
    command_for,
    decode_body,
    module_segments,
    resolve,
)
from vproxy.control.openapi import (
    ROUTES,
    Operation,
    Route,
    Shape,
    children_of,
    openapi_document,
    top_level_types,
)

T = ResourceType
A = Action


def module(path: str, method: str) -> ModuleRequest:
    segments = module_segments("/api/v1/module/" + path)
    assert segments is not None
    return resolve(segments, method)


def http_command(path: str, method: str, body: dict[str, Any] | None = None, **kw: Any) -> Command:
    return command_for(module(path, method), body, **kw)


# --------------------------------------------------------------------- path -> route

RESOLVE_CASES = [
    ("tcp-lb", "GET", T.TCP_LB, (), Shape.COLLECTION, A.LIST, None),
    ("tcp-lb", "POST", T.TCP_LB, (), Shape.COLLECTION, A.ADD, None),
    ("tcp-lb/lb0", "GET", T.TCP_LB, (), Shape.ITEM, A.LIST_DETAIL, "lb0"),
    ("tcp-lb/lb0", "PUT", T.TCP_LB, (), Shape.ITEM, A.UPDATE, "lb0"),
    ("tcp-lb/lb0", "DELETE", T.TCP_LB, (), Shape.ITEM, A.REMOVE, "lb0"),
    ("tcp-lb/lb0/detail", "GET", T.TCP_LB, (), Shape.ITEM_DETAIL, A.LIST_DETAIL, "lb0"),
    ("tcp-lb/lb0/connection", "GET", T.CONNECTION, (T.TCP_LB,), Shape.COLLECTION, A.LIST, None),
    (
        "tcp-lb/lb0/connection/detail",
        "GET",
        T.CONNECTION,
        (T.TCP_LB,),
        Shape.LIST_DETAIL,
        A.LIST_DETAIL,
        None,
    ),
    (
        "tcp-lb/lb0/connection/detail",
        "DELETE",
        T.CONNECTION,
        (T.TCP_LB,),
        Shape.ITEM,
        A.FORCE_REMOVE,
        "detail",
    ),
    ("tcp-lb/lb0/session", "GET", T.SESSION, (T.TCP_LB,), Shape.COLLECTION, A.LIST, None),
    ("tcp-lb/lb0/server-sock", "GET", T.SERVER_SOCK, (T.TCP_LB,), Shape.COLLECTION, A.LIST, None),
    (
        "server-group/g/server/s/bytes-in",
        "GET",
        T.BYTES_IN,
        (T.SERVER, T.SERVER_GROUP),
        Shape.COLLECTION,
        A.LIST,
        None,
    ),
    (
        "tcp-lb/l/server-sock/127.0.0.1%3A80/accepted-conn-count",
        "GET",
        T.ACCEPTED_CONN_COUNT,
        (T.SERVER_SOCK, T.TCP_LB),
        Shape.COLLECTION,
        A.LIST,
        None,
    ),
    (
        "upstream/u/server-group",
        "POST",
        T.SERVER_GROUP,
        (T.UPSTREAM,),
        Shape.COLLECTION,
        A.ADD,
        None,
    ),
    ("upstream/u/server-group/g", "PUT", T.SERVER_GROUP, (T.UPSTREAM,), Shape.ITEM, A.UPDATE, "g"),
    (
        "upstream/u/server-group/g",
        "DELETE",
        T.SERVER_GROUP,
        (T.UPSTREAM,),
        Shape.ITEM,
        A.REMOVE,
        "g",
    ),
    (
        "event-loop-group/e/event-loop/l",
        "GET",
        T.EVENT_LOOP,
        (T.EVENT_LOOP_GROUP,),
        Shape.ITEM,
        A.LIST_DETAIL,
        "l",
    ),
    (
        "security-group/s/security-group-rule",
        "POST",
        T.SECURITY_GROUP_RULE,
        (T.SECURITY_GROUP,),
        Shape.COLLECTION,
        A.ADD,
        None,
    ),
    ("dns-cache", "GET", T.DNS_CACHE, (), Shape.COLLECTION, A.LIST, None),
    ("dns-cache/detail", "GET", T.DNS_CACHE, (), Shape.LIST_DETAIL, A.LIST_DETAIL, None),
]


@pytest.mark.parametrize(
    ("path", "method", "type_", "chain", "shape", "action", "name"), RESOLVE_CASES
)
def test_resolve(
    path: str,
    method: str,
    type_: ResourceType,
    chain: tuple[ResourceType, ...],
    shape: Shape,
    action: Action,
    name: str | None,
) -> None:
    req = module(path, method)
    assert req.route.type is type_
    assert req.route.chain == chain
    assert req.route.shape is shape
    assert req.operation.action is action
    assert req.name == name
    assert tuple(ref.type for ref in req.parents) == chain


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("", "GET", 404),
        ("tcp-lb/", "GET", 404),
        ("tl", "GET", 404),  # short names are for the console; URLs use long names
        ("nope", "GET", 404),
        ("server", "GET", 404),  # a server only exists in a server-group
        ("tcp-lb/lb0/server", "GET", 404),
        ("upstream/u/server-group/g/server", "GET", 404),
        ("tcp-lb/a/b/c/d", "GET", 404),
        ("tcp-lb", "DELETE", 405),
        ("tcp-lb/lb0", "POST", 405),
        ("upstream/u", "PUT", 405),  # upstreams have no settings
        ("tcp-lb/lb0/connection", "POST", 405),
        ("tcp-lb/lb0/detail", "DELETE", 405),
        ("tcp-lb", "HEAD", 405),
    ],
)
def test_resolve_refusals(path: str, method: str, status: int) -> None:
    with pytest.raises(HttpError) as info:
        module(path, method)
    assert info.value.status == status
    if status == 405:
        assert info.value.headers["Allow"]


def test_segments_decode_percent_escapes_after_splitting() -> None:
    assert module_segments("/api/v1/module/tcp-lb/l/connection/a%3A1%2Fb%3A2") == [
        "tcp-lb",
        "l",
        "connection",
        "a:1/b:2",
    ]
    assert module_segments("/api/v1/other") is None
    with pytest.raises(HttpError) as info:
        module_segments("/api/v1/module/tcp-lb/%ff")
    assert info.value.status == 400


def test_every_route_has_a_unique_template_and_methods() -> None:
    templates = [route.template for route in ROUTES.values()]
    assert len(templates) == len(set(templates))
    for route in ROUTES.values():
        assert route.operations
        for method, op in route.operations.items():
            assert op.method == method
            assert route.chain in op.form.parents


def test_every_configured_type_and_form_is_reachable() -> None:
    reached = {
        (route.type, op.action, route.chain)
        for route in ROUTES.values()
        for op in route.operations.values()
    } | {
        (route.type, Action.FORCE_REMOVE, route.chain)
        for route in ROUTES.values()
        for op in route.operations.values()
        if op.force_form is not None
    }
    for type_, spec in GRAMMAR.items():
        for form in spec.forms:
            for chain in form.parents:
                assert (type_, form.action, chain) in reached, (type_, form.action, chain)


def test_children_and_top_level() -> None:
    assert T.SERVER_GROUP in top_level_types()
    assert T.SERVER not in top_level_types()
    assert T.CONNECTION not in top_level_types()
    assert children_of(T.SERVER_GROUP, ()) == (T.SERVER,)
    assert children_of(T.UPSTREAM, ()) == (T.SERVER_GROUP,)
    assert children_of(T.SERVER_GROUP, (T.UPSTREAM,)) == ()
    assert children_of(T.EVENT_LOOP_GROUP, ()) == (T.EVENT_LOOP,)
    assert children_of(T.TCP_LB, ()) == ()


# --------------------------------------------------------------- JSON -> Command

# (path, method, body, query force, the same command as the console writes it)
EQUIVALENT = [
    ("event-loop-group", "POST", {"name": "worker"}, False, "add event-loop-group worker"),
    (
        "event-loop-group/worker/event-loop",
        "POST",
        {"name": "worker1"},
        False,
        "add event-loop worker1 to event-loop-group worker",
    ),
    (
        "server-group",
        "POST",
        {
            "name": "ngx",
            "timeout": 500,
            "period": 1000,
            "up": 2,
            "down": 3,
            "method": "wrr",
            "event-loop-group": "worker",
        },
        False,
        "add server-group ngx timeout 500 period 1000 up 2 down 3 method wrr "
        "event-loop-group worker",
    ),
    (
        "server-group/ngx/server",
        "POST",
        {"name": "backend1", "address": "127.0.0.1:8080", "weight": 10},
        False,
        "add server backend1 to server-group ngx address 127.0.0.1:8080 weight 10",
    ),
    ("upstream", "POST", {"name": "backend-groups"}, False, "add upstream backend-groups"),
    (
        "upstream/backend-groups/server-group",
        "POST",
        {"name": "ngx", "weight": 10},
        False,
        "add server-group ngx to upstream backend-groups weight 10",
    ),
    (
        "tcp-lb",
        "POST",
        {
            "name": "lb0",
            "acceptor-elg": "acceptor",
            "event-loop-group": "worker",
            "address": "127.0.0.1:18080",
            "upstream": "backend-groups",
            "in-buffer-size": 16384,
            "out-buffer-size": 16384,
        },
        False,
        "add tcp-lb lb0 acceptor-elg acceptor event-loop-group worker address 127.0.0.1:18080 "
        "upstream backend-groups in-buffer-size 16384 out-buffer-size 16384",
    ),
    ("server-group/ngx", "GET", None, False, "list-detail server-group ngx"),
    ("server-group/ngx/server", "GET", None, False, "list server in server-group ngx"),
    ("server-group/ngx/detail", "GET", None, False, "list-detail server-group ngx"),
    # A server may be named "detail": only observable types have a list-detail path.
    (
        "server-group/ngx/server/detail",
        "GET",
        None,
        False,
        "list-detail server detail in server-group ngx",
    ),
    ("server-group/ngx", "PUT", {"method": "wlc"}, False, "update server-group ngx method wlc"),
    (
        "server-group/ngx/server/backend1",
        "PUT",
        {"weight": 5},
        False,
        "update server backend1 in server-group ngx weight 5",
    ),
    (
        "security-group",
        "POST",
        {"name": "secg0", "default": "allow"},
        False,
        "add security-group secg0 default allow",
    ),
    (
        "security-group/secg0/security-group-rule",
        "POST",
        {
            "name": "r0",
            "network": "10.0.0.0/8",
            "protocol": "TCP",
            "port-range": "22,22",
            "default": "deny",
        },
        False,
        "add security-group-rule r0 to security-group secg0 network 10.0.0.0/8 protocol TCP "
        "port-range 22,22 default deny",
    ),
    (
        "socks5-server",
        "POST",
        {
            "name": "s5",
            "address": "127.0.0.1:18081",
            "upstream": "backend-groups",
            "security-group": "secg0",
            "allow-non-backend": True,
        },
        False,
        "add socks5-server s5 address 127.0.0.1:18081 upstream backend-groups "
        "security-group secg0 allow-non-backend",
    ),
    (
        "socks5-server",
        "POST",
        {
            "name": "s5",
            "address": "127.0.0.1:18081",
            "upstream": "u",
            "allow-non-backend": False,
        },
        False,
        "add socks5-server s5 address 127.0.0.1:18081 upstream u",
    ),
    ("tcp-lb/lb0/connection", "GET", None, False, "list connection in tcp-lb lb0"),
    (
        "server-group/ngx/server/backend1/bytes-in",
        "GET",
        None,
        False,
        "list bytes-in in server backend1 in server-group ngx",
    ),
    (
        "event-loop-group/worker/event-loop/worker1/connection/%2F.*%2F",
        "DELETE",
        None,
        False,
        "force-remove conn /.*/ from el worker1 in elg worker",
    ),
    (
        "upstream/backend-groups/server-group/ngx",
        "DELETE",
        None,
        False,
        "remove server-group ngx from upstream backend-groups",
    ),
    ("tcp-lb/lb0", "DELETE", None, True, "force-remove tcp-lb lb0"),
    ("tcp-lb/lb0", "DELETE", None, False, "remove tcp-lb lb0"),
    (
        "cert-key",
        "POST",
        {"name": "ck", "cert": ["/a.pem", "/b.pem"], "key": "/k.pem"},
        False,
        "add cert-key ck cert /a.pem,/b.pem key /k.pem",
    ),
    (
        "tcp-lb/l",
        "PUT",
        {"cert-key": ["a", "b"], "protocol": "http/1.x"},
        False,
        "update tcp-lb l cert-key a,b protocol http/1.x",
    ),
    (
        "server-group",
        "POST",
        {
            "name": "g",
            "timeout": 1,
            "period": 1.0,
            "up": 1,
            "down": 1,
            "annotations": {"host": "a b"},
        },
        False,
        'add server-group g timeout 1 period 1 up 1 down 1 annotations \'{"host":"a b"}\'',
    ),
    (
        "smart-node-delegate",
        "POST",
        {"name": "n", "service": "svc", "zone": "z", "address": "::1", "port": 80},
        False,
        "add smart-node-delegate n service svc zone z address ::1 port 80",
    ),
]


@pytest.mark.parametrize(("path", "method", "body", "force", "line"), EQUIVALENT)
def test_json_gives_the_console_command(
    path: str, method: str, body: dict[str, Any] | None, force: bool, line: str
) -> None:
    assert http_command(path, method, body, force=force) == parse(line)


# (path, method, body, words the message must hold)
REFUSED = [
    ("tcp-lb", "POST", {"address": "127.0.0.1:1", "upstream": "u"}, ['missing field "name"']),
    (
        "tcp-lb",
        "POST",
        {"name": 1, "address": "127.0.0.1:1", "upstream": "u"},
        ['"name" must be a string'],
    ),
    ("tcp-lb", "POST", {"name": "in", "address": "127.0.0.1:1", "upstream": "u"}, ["reserved"]),
    (
        "tcp-lb",
        "POST",
        {"name": "a b", "address": "127.0.0.1:1", "upstream": "u"},
        ["invalid tcp-lb name"],
    ),
    ("tcp-lb", "POST", {"name": "l", "upstream": "u"}, ['missing parameter "address"']),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "x", "upstream": "u"},
        ["invalid value", "address"],
    ),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "1.2.3.4:1", "upstream": "u", "addr": "x"},
        ['unknown field "addr"'],
    ),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "1.2.3.4:1", "upstream": "u", "timeout": "5"},
        ['"timeout" must be an integer'],
    ),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "1.2.3.4:1", "upstream": "u", "timeout": True},
        ['"timeout" must be an integer'],
    ),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "1.2.3.4:1", "upstream": "u", "timeout": 1.5},
        ['"timeout" must be an integer'],
    ),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "1.2.3.4:1", "upstream": "u", "timeout": 0},
        ["invalid value", "timeout"],
    ),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "1.2.3.4:1", "upstream": "u", "protocol": "TCP"},
        ["lower case"],
    ),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "1.2.3.4:1", "upstream": "u", "cert-key": "a,b"},
        ["array of strings"],
    ),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "1.2.3.4:1", "upstream": "u", "cert-key": []},
        ["at least one"],
    ),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "1.2.3.4:1", "upstream": "u", "cert-key": ["a,b"]},
        ["cannot hold ','"],
    ),
    (
        "tcp-lb",
        "POST",
        {"name": "l", "address": "1.2.3.4:1", "upstream": "u", "cert-key": ["a", "a"]},
        ["twice"],
    ),
    (
        "server-group",
        "POST",
        {"name": "g", "timeout": 1, "period": 1, "up": 1, "down": 1, "method": "WRR"},
        ["method"],
    ),
    (
        "server-group",
        "POST",
        {"name": "g", "timeout": 1, "period": 1, "up": 1, "down": 1, "annotations": "{}"},
        ["object of strings"],
    ),
    (
        "server-group",
        "POST",
        {"name": "g", "timeout": 1, "period": 1, "up": 1, "down": 1, "annotations": {"a": 1}},
        ["must be a JSON string"],
    ),
    ("server-group/g", "PUT", {}, ["nothing to update"]),
    ("server-group/g", "PUT", {"name": "g"}, ['unknown field "name"']),
    ("server-group/g", "PUT", {"event-loop-group": "x"}, ['unknown field "event-loop-group"']),
    ("socks5-server/s", "PUT", {"allow-non-backend": False}, ["nothing to update"]),
    (
        "socks5-server/s",
        "PUT",
        {"allow-non-backend": "yes"},
        ['"allow-non-backend" must be a boolean'],
    ),
    (
        "socks5-server/s",
        "PUT",
        {"allow-non-backend": True, "deny-non-backend": True},
        ["contradicts"],
    ),
    (
        "smart-node-delegate",
        "POST",
        {"name": "n", "service": "s", "zone": "z", "port": 1},
        ["exactly one of"],
    ),
    (
        "smart-node-delegate",
        "POST",
        {"name": "n", "service": "s", "zone": "z", "port": 1, "nic": "e", "address": "::1"},
        ["exactly one of"],
    ),
    ("tcp-lb/a%20b", "DELETE", None, ["invalid tcp-lb name"]),
    ("tcp-lb/a%20b/connection", "GET", None, ["invalid tcp-lb name"]),
    ("tcp-lb/l/connection/%2F(%2F", "DELETE", None, ["invalid regular expression"]),
]


@pytest.mark.parametrize(("path", "method", "body", "words"), REFUSED)
def test_refused_bodies(
    path: str, method: str, body: dict[str, Any] | None, words: list[str]
) -> None:
    with pytest.raises(CommandError) as info:
        http_command(path, method, body)
    assert info.value.http_status == 400
    for word in words:
        assert word in info.value.message
    assert "position" not in info.value.message


# -------------------------------------------------------------------- body decoding


def test_decode_body_reads_an_object() -> None:
    assert decode_body(b'{"a": [1, {"b": "c"}]}', "application/json", None) == {
        "a": [1, {"b": "c"}]
    }
    assert decode_body(b"{}", "application/json", "UTF-8") == {}


@pytest.mark.parametrize(
    ("body", "ctype", "charset", "status"),
    [
        (b"{}", "text/plain", None, 415),
        (b"{}", "application/x-www-form-urlencoded", None, 415),
        (b"{}", "application/json", "latin-1", 415),
        (b"x" * (MAX_BODY + 1), "application/json", None, 413),
        (b"", "application/json", None, 400),
        (b"{", "application/json", None, 400),
        (b"\xff{}", "application/json", None, 400),
        (b"\xef\xbb\xbf{}", "application/json", None, 400),
        (b"[]", "application/json", None, 400),
        (b"null", "application/json", None, 400),
        (b'"x"', "application/json", None, 400),
        (b'{"a": 1, "a": 2}', "application/json", None, 400),
        (b'{"a": NaN}', "application/json", None, 400),
        (b'{"a": Infinity}', "application/json", None, 400),
        (b'{"a": ' + b"9" * 5000 + b"}", "application/json", None, 400),
        (
            b'{"a":' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
            "application/json",
            None,
            400,
        ),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", None, 400),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json", None, 400),
    ],
)
def test_decode_body_refusals(body: bytes, ctype: str, charset: str | None, status: int) -> None:
    with pytest.raises(HttpError) as info:
        decode_body(body, ctype, charset)
    assert info.value.status == status
    assert info.value.to_dict() == {"code": status, "message": info.value.message}


def test_depth_limit_is_inclusive() -> None:
    # MAX_JSON_DEPTH levels are fine: the object itself plus MAX_JSON_DEPTH - 1 inside.
    inner = b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1)
    assert decode_body(b'{"a":' + inner + b"}", "application/json", None)


# ----------------------------------------------------- the OpenAPI document agrees

DOC: Any = openapi_document(bearer=True)
_REGISTRY = Registry().with_resource("urn:vproxy-openapi", DRAFT202012.create_resource(DOC))


def _validator(key: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"urn:vproxy-openapi#/components/schemas/{key}"}, registry=_REGISTRY
    )


def test_document_is_valid_openapi() -> None:
    validate_spec(DOC)
    validate_spec(openapi_document(bearer=False))
    op_ids = [
        op["operationId"]
        for item in DOC["paths"].values()
        for method, op in item.items()
        if method != "parameters"
    ]
    assert len(op_ids) == len(set(op_ids))
    assert DOC["security"] == [{"bearer": []}]
    assert DOC["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in openapi_document(bearer=False)


def test_document_has_every_route() -> None:
    for route in ROUTES.values():
        item = DOC["paths"][route.template]
        assert {m.upper() for m in item if m != "parameters"} == set(route.operations)


def _body_forms() -> list[tuple[Route, Operation, str]]:
    out = []
    for route in ROUTES.values():
        for op in route.operations.values():
            if op.method in ("POST", "PUT"):
                ref = DOC["paths"][route.template][op.method.lower()]["requestBody"]["content"][
                    "application/json"
                ]["schema"]["$ref"]
                out.append((route, op, ref.rsplit("/", 1)[1]))
    return out


BODY_FORMS = _body_forms()

EXAMPLES: dict[ValueKind, Any] = {
    ValueKind.INT: None,  # the minimum
    ValueKind.ADDRESS: "127.0.0.1:8080",
    ValueKind.IP: "127.0.0.1",
    ValueKind.NAME: "n1",
    ValueKind.NAME_LIST: ["n1", "n2"],
    ValueKind.NETWORK: "10.0.0.0/8",
    ValueKind.PORT_RANGE: "22,80",
    ValueKind.CHOICE: None,  # the first member
    ValueKind.PROTOCOL: "tcp",
    ValueKind.JSON_OBJECT: {"host": "example.com"},
    ValueKind.PATH: "/etc/x.pem",
    ValueKind.PATH_LIST: ["/etc/a.pem", "/etc/b.pem"],
    ValueKind.TOKEN: "svc",
    ValueKind.SECRET: "s3cret",
}

# Kinds whose schema is exactly what the server accepts; for the others (addresses,
# networks, port ranges, the size of annotations) the schema states the JSON type and
# the server checks the rest, so the schema may only be looser.
EXACT = {
    ValueKind.INT,
    ValueKind.NAME,
    ValueKind.NAME_LIST,
    ValueKind.CHOICE,
    ValueKind.PROTOCOL,
    ValueKind.PATH,
    ValueKind.PATH_LIST,
    ValueKind.TOKEN,
    ValueKind.SECRET,
}


def example(spec: ParamSpec) -> Any:
    if spec.kind is ValueKind.INT:
        return spec.minimum
    if spec.kind is ValueKind.CHOICE:
        assert spec.choices is not None
        return next(iter(spec.choices)).value
    return EXAMPLES[spec.kind]


def valid_body(op: Operation) -> dict[str, Any]:
    form: Form = op.form
    body: dict[str, Any] = {"name": "x1"} if op.action is Action.ADD else {}
    skip = {name for group in form.exactly_one_of for name in group[1:]}
    for spec in form.params:
        if spec.name in skip:
            continue
        if spec.required or op.action is Action.ADD or not body:
            body[spec.name] = example(spec)
    return body


def path_of(route: Route) -> str:
    parts = []
    for t in reversed(route.chain):
        parts += [t.value, "p1"]
    parts.append(route.type.value)
    if route.shape is Shape.ITEM:
        parts.append("x1")
    return "/".join(parts)


def server_accepts(route: Route, op: Operation, body: dict[str, Any]) -> bool:
    path = path_of(route)
    try:
        http_command(path, op.method, body)
    except CommandError as exc:
        status = exc.http_status
    else:
        return True
    assert status == 400
    return False


@pytest.mark.parametrize(("route", "op", "key"), BODY_FORMS, ids=[k for _, _, k in BODY_FORMS])
def test_valid_body_is_accepted_by_both(route: Route, op: Operation, key: str) -> None:
    body = valid_body(op)
    assert _validator(key).is_valid(body), list(_validator(key).iter_errors(body))
    assert server_accepts(route, op, body)


@pytest.mark.parametrize(("route", "op", "key"), BODY_FORMS, ids=[k for _, _, k in BODY_FORMS])
def test_structural_refusals_agree(route: Route, op: Operation, key: str) -> None:
    base = valid_body(op)
    variants: list[dict[str, Any]] = [{**base, "no-such-field": 1}]
    for field in base:
        spec = op.form.param(field)
        if field == "name" or (spec is not None and spec.required):
            variants.append({k: v for k, v in base.items() if k != field})
    for flag in op.form.flags:
        variants += [{**base, flag.name: True}, {**base, flag.name: False}, {**base, flag.name: 1}]
    for group in op.form.exclusive_flags:
        variants.append({**base, **{name: True for name in group}})
    for group in op.form.exactly_one_of:
        specs = [op.form.param(name) for name in group]
        variants.append({**base, **{s.name: example(s) for s in specs if s is not None}})
        variants.append({k: v for k, v in base.items() if k not in group})
    if op.form.needs_change:
        variants.append({})
        variants += [{flag.name: False} for flag in op.form.flags]
    for body in variants:
        assert _validator(key).is_valid(body) == server_accepts(route, op, body), body


TRICKY: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    1.0,
    1.5,
    10**12,
    "",
    "0",
    "1",
    "wrr",
    "WLC",
    "allow",
    "TCP",
    "tcp",
    "Http",
    "http/1.x",
    "in",
    "to",
    "a,b",
    "a b",
    "n1",
    "n1\n",
    "/x",
    "/x/",
    "(x)",
    "a" * 128,
    "a" * 129,
    "x" * 4097,
    "x" * 257,
    "\x7f",
    "\u2028",
    "tab\there",
    "127.0.0.1:80",
    "22,80",
    "80,22",
    "10.0.0.0/8",
    [],
    ["n1"],
    ["n1", "n1"],
    ["a,b"],
    ["n1", 2],
    [""],
    {},
    {"host": "h"},
    {"host": 1},
]


@pytest.mark.parametrize(("route", "op", "key"), BODY_FORMS, ids=[k for _, _, k in BODY_FORMS])
def test_tricky_values_agree_with_the_schema(route: Route, op: Operation, key: str) -> None:
    for spec in op.form.params:
        for value in TRICKY:
            body = {**valid_body(op), spec.name: value}
            schema_ok = _validator(key).is_valid(body)
            server_ok = server_accepts(route, op, body)
            if server_ok:
                assert schema_ok, (spec.name, value)
            if spec.kind in EXACT:
                assert schema_ok == server_ok, (spec.name, value)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(10**12), max_value=10**12)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
        | st.sampled_from(
            [
                "wrr",
                "WLC",
                "tcp",
                "Http",
                "in",
                "a,b",
                "a b",
                "n1\n",
                "/x",
                "127.0.0.1:80",
                "(x)",
                "a" * 129,
                "\x7f",
                "\u2028",
                "",
                "0",
                "4294967296",
            ]
        )
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.sampled_from(["host", "a", "1"]), children, max_size=2)
        ),
        max_leaves=6,
    )


_FIELDS = [(route, op, key, spec) for route, op, key in BODY_FORMS for spec in op.form.params]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_field_values_agree_with_the_schema(data: st.DataObject) -> None:
    route, op, key, spec = data.draw(st.sampled_from(_FIELDS))
    value = data.draw(_json_values())
    body = {**valid_body(op), spec.name: value}
    schema_ok = _validator(key).is_valid(body)
    server_ok = server_accepts(route, op, body)
    if server_ok:
        assert schema_ok, (spec.name, value)
    if spec.kind in EXACT:
        assert schema_ok == server_ok, (spec.name, value)


@settings(max_examples=200)
@given(name=st.text(max_size=20) | st.sampled_from(["to", "from", "in", "a" * 128, "a" * 129]))
def test_names_agree_with_the_schema(name: str) -> None:
    route = ROUTES[(T.UPSTREAM, (), Shape.COLLECTION)]
    op = route.operations["POST"]
    schema_ok = _validator("upstream.add").is_valid({"name": name})
    assert schema_ok == server_accepts(route, op, {"name": name}), name


def test_json_schema_defaults_are_valid_values() -> None:
    for _route, _op, key in BODY_FORMS:
        props = DOC["components"]["schemas"][key]["properties"]
        for field, schema in props.items():
            if "default" in schema:
                pointer = f"urn:vproxy-openapi#/components/schemas/{key}/properties/{field}"
                validator = Draft202012Validator({"$ref": pointer}, registry=_REGISTRY)
                assert validator.is_valid(schema["default"]), (key, field)


def test_document_is_plain_json() -> None:
    assert json.loads(json.dumps(DOC)) == DOC
