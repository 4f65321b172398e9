"""The HTTP controller over loopback with a real client (http.client), on uvloop and
asyncio: CRUD for every resource type, statistics, auth, limits and bad input. Every
request body and every response is validated against the OpenAPI document the server
itself serves."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from helpers import (
    Backend,
    LoopThread,
    assert_stop_leaves_no_client_connected,
    echo_handler,
    wait_until,
)
from vproxy.control.application import Application
from vproxy.control.command import parse
from vproxy.control.executor import Executor, Origin
from vproxy.control.http import MAX_BODY, HttpController
from vproxy.control.openapi import openapi_document
from vproxy.control.reply import OK, ErrorReply

TOKEN = "s3cret-token"
M = "/api/v1/module"


# ---------------------------------------------------------------- OpenAPI checking


class OpenApiChecker:
    """Finds the operation of a request in the document and validates bodies."""

    _valid_docs: set[str] = set()  # the spec validator takes seconds: once per document

    def __init__(self, doc: dict[str, Any]) -> None:
        text = json.dumps(doc, sort_keys=True)
        if text not in self._valid_docs:
            validate_spec(doc)
            self._valid_docs.add(text)
        self.doc = doc
        self.registry = Registry().with_resource("urn:served", DRAFT202012.create_resource(doc))
        self.templates = [
            (template, self._regex(template), template.count("{")) for template in doc["paths"]
        ]

    @staticmethod
    def _regex(template: str) -> re.Pattern[str]:
        parts = re.split(r"(\{[^}]+\})", template)
        return re.compile(
            "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$"
        )

    def operation(self, method: str, raw_path: str) -> tuple[str, dict[str, Any]] | None:
        """The (pointer, operation) for a method on a raw (percent-encoded) path."""
        path = raw_path.split("?", 1)[0]
        hits = [
            (n_vars, template)
            for template, regex, n_vars in self.templates
            if regex.match(path) and method.lower() in self.doc["paths"][template]
        ]
        if not hits:
            return None
        template = min(hits)[1]  # literal segments win over templated ones
        pointer = "/paths/" + template.replace("~", "~0").replace("/", "~1")
        return f"{pointer}/{method.lower()}", self.doc["paths"][template][method.lower()]

    def _validate(self, pointer: str, instance: Any) -> None:
        Draft202012Validator({"$ref": f"urn:served#{pointer}"}, registry=self.registry).validate(
            instance
        )

    def request_body_valid(self, method: str, raw_path: str, body: Any) -> bool:
        found = self.operation(method, raw_path)
        if found is None or "requestBody" not in found[1]:
            return False  # the document takes no body there
        pointer = found[0]
        schema_ptr = f"{pointer}/requestBody/content/application~1json/schema"
        validator = Draft202012Validator(
            {"$ref": f"urn:served#{schema_ptr}"}, registry=self.registry
        )
        return bool(validator.is_valid(body))

    def check_response(self, method: str, raw_path: str, resp: Response) -> None:
        found = self.operation(method, raw_path)
        if found is None:
            # Not a documented path/method: the answer must still be a JSON 4xx.
            assert 400 <= resp.status < 500, (method, raw_path, resp.status)
            if method != "HEAD":  # (a HEAD answer has no body)
                self._validate("/components/schemas/Error", resp.json())
            return
        pointer, op = found
        key = str(resp.status)
        if key not in op["responses"]:
            key = f"{resp.status // 100}XX"
        assert key in op["responses"], (method, raw_path, resp.status, resp.body[:200])
        response_ptr = f"{pointer}/responses/{key}"
        response = op["responses"][key]
        if "$ref" in response:  # components/responses/...
            response_ptr = response["$ref"].removeprefix("#")
            _, _, name = response_ptr.rpartition("/")
            response = self.doc["components"]["responses"][name]
        content = response["content"]
        media = resp.content_type
        assert media in content, (media, list(content))
        escaped = media.replace("~", "~0").replace("/", "~1")
        schema_ptr = f"{response_ptr}/content/{escaped}/schema"
        value = resp.json() if media == "application/json" else resp.body.decode()
        self._validate(schema_ptr, value)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip()

    def json(self) -> Any:
        assert self.content_type == "application/json", (self.status, self.body[:200])
        return json.loads(self.body)


class Client:
    """http.client against one controller; every response is checked against the doc."""

    def __init__(self, address: tuple[str, int], token: str | None) -> None:
        self.address = address
        self.token = token
        self.checker: OpenApiChecker | None = None
        self.checker = OpenApiChecker(self.get("/api/v1/openapi.json").json())

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        auth: bool = True,
    ) -> Response:
        conn = http.client.HTTPConnection(*self.address, timeout=10)
        try:
            hdrs = dict(headers or {})
            if auth and self.token is not None:
                hdrs.setdefault("Authorization", f"Bearer {self.token}")
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            resp = Response(r.status, r.headers, r.read())
        finally:
            conn.close()
        if self.checker is not None:
            self.checker.check_response(method, path, resp)
        return resp

    def call(self, method: str, path: str, body: Any = None, *, valid: bool = True) -> Response:
        """A JSON request; with ``valid`` the body must satisfy the document."""
        data = None
        headers = {}
        if body is not None:
            assert self.checker is not None
            assert self.checker.request_body_valid(method, path, body) is valid, body
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self.raw(method, path, data, headers)

    def get(self, path: str) -> Response:
        return self.raw("GET", path)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.call(method, path, body)
        assert resp.status in (200, 201), (method, path, resp.status, resp.body)
        if method == "POST":
            assert resp.status == 201
            assert resp.headers["Location"] == f"{path}/{quote(body['name'], safe='')}"
        return resp.json()

    def error(self, method: str, path: str, body: Any = None, *, status: int, **kw: Any) -> str:
        resp = self.call(method, path, body, **kw)
        assert resp.status == status, (method, path, resp.status, resp.body)
        payload = resp.json()
        assert payload["code"] == status
        message: str = payload["message"]
        return message


# ------------------------------------------------------------------------ fixtures


@dataclass
class Served:
    app: Application
    executor: Executor
    controller: HttpController
    client: Client


@pytest.fixture
def served(loop_kind: str) -> Iterator[Served]:
    app = Application.create_default()
    executor = Executor(app, allow_system_in_non_stdio=True)
    controller = HttpController("h0", ("127.0.0.1", 0), executor, app.control_el, token=TOKEN)
    try:
        controller.start()
        yield Served(app, executor, controller, Client(controller.address, TOKEN))
    finally:
        controller.stop()
        app.close()


@pytest.fixture
def client(served: Served) -> Client:
    return served.client


FAST_GROUP = {"timeout": 300, "period": 100, "up": 1, "down": 2}


# -------------------------------------------------------------------- the basics


def test_healthz_needs_no_token(client: Client) -> None:
    resp = client.raw("GET", "/healthz", auth=False)
    assert resp.status == 200
    assert resp.json() == {"status": "ok"}


def test_served_document_is_the_generated_one(client: Client) -> None:
    assert client.get("/api/v1/openapi.json").json() == openapi_document(bearer=True)


def test_event_loop_groups_and_loops(client: Client) -> None:
    assert "(worker-elg)" in client.ok("GET", f"{M}/event-loop-group")
    assert client.ok("POST", f"{M}/event-loop-group", {"name": "w"}) == "OK"
    assert client.ok("GET", f"{M}/event-loop-group/w") == {"name": "w", "event-loops": []}
    client.ok("POST", f"{M}/event-loop-group/w/event-loop", {"name": "w1"})
    client.ok("POST", f"{M}/event-loop-group/w/event-loop", {"name": "w2"})
    assert client.ok("GET", f"{M}/event-loop-group/w/event-loop") == ["w1", "w2"]
    assert client.ok("GET", f"{M}/event-loop-group/w/event-loop/w1")["name"] == "w1"
    detail = client.ok("GET", f"{M}/event-loop-group/w/detail")
    assert [el["name"] for el in detail["children"]["event-loop"]] == ["w1", "w2"]
    client.error("POST", f"{M}/event-loop-group/w/event-loop", {"name": "w1"}, status=409)
    client.ok("DELETE", f"{M}/event-loop-group/w/event-loop/w2")
    client.error("GET", f"{M}/event-loop-group/w/event-loop/w2", status=404)
    client.ok("DELETE", f"{M}/event-loop-group/w")
    client.error("GET", f"{M}/event-loop-group/w", status=404)
    client.error("DELETE", f"{M}/event-loop-group/(worker-elg)", status=409)


def test_upstreams_server_groups_and_servers(client: Client) -> None:
    client.ok("POST", f"{M}/upstream", {"name": "u0"})
    client.ok(
        "POST",
        f"{M}/server-group",
        {"name": "g0", **FAST_GROUP, "method": "wrr", "annotations": {"host": "a.example"}},
    )
    client.ok("POST", f"{M}/server-group/g0/server", {"name": "s0", "address": "127.0.0.1:9"})
    client.ok(
        "POST",
        f"{M}/server-group/g0/server",
        {"name": "s1", "address": "127.0.0.2:9", "weight": 3},
    )
    assert client.ok("GET", f"{M}/server-group/g0/server") == ["s0", "s1"]
    s1 = client.ok("GET", f"{M}/server-group/g0/server/s1")
    assert (s1["name"], s1["weight"]) == ("s1", 3)
    client.ok("PUT", f"{M}/server-group/g0/server/s1", {"weight": 7})
    assert client.ok("GET", f"{M}/server-group/g0/server/s1")["weight"] == 7
    assert client.ok("GET", f"{M}/server-group/g0/server/s1/bytes-in") == 0
    assert client.ok("GET", f"{M}/server-group/g0/server/s1/bytes-out") == 0

    client.ok("PUT", f"{M}/server-group/g0", {"method": "wlc", "up": 2})
    g0 = client.ok("GET", f"{M}/server-group/g0")
    assert (g0["method"], g0["up"], g0["annotations"]) == ("wlc", 2, {"host": "a.example"})
    detail = client.ok("GET", f"{M}/server-group/g0/detail")
    assert [s["name"] for s in detail["children"]["server"]] == ["s0", "s1"]

    # attach, list, update the weight, read, detach
    client.ok("POST", f"{M}/upstream/u0/server-group", {"name": "g0", "weight": 5})
    client.error("POST", f"{M}/upstream/u0/server-group", {"name": "g0"}, status=409)
    assert client.ok("GET", f"{M}/upstream/u0/server-group") == ["g0"]
    client.ok("PUT", f"{M}/upstream/u0/server-group/g0", {"weight": 9})
    assert client.ok("GET", f"{M}/upstream/u0/server-group/g0")["weight"] == 9
    assert (
        client.ok("GET", f"{M}/upstream/u0/detail")["children"]["server-group"][0]["name"] == "g0"
    )
    client.error("DELETE", f"{M}/server-group/g0", status=409)  # in use by u0
    client.ok("DELETE", f"{M}/upstream/u0/server-group/g0")
    assert client.ok("GET", f"{M}/upstream/u0/server-group") == []
    client.error("DELETE", f"{M}/upstream/u0/server-group/g0", status=404)

    client.ok("DELETE", f"{M}/server-group/g0/server/s0")
    assert client.ok("GET", f"{M}/server-group/g0/server") == ["s1"]
    client.ok("DELETE", f"{M}/server-group/g0")
    client.ok("DELETE", f"{M}/upstream/u0")
    assert client.ok("GET", f"{M}/upstream") == []
    assert client.ok("GET", f"{M}/server-group") == []


def test_force_remove_of_a_server_group_in_use(client: Client) -> None:
    client.ok("POST", f"{M}/upstream", {"name": "u0"})
    client.ok("POST", f"{M}/server-group", {"name": "g0", **FAST_GROUP})
    client.ok("POST", f"{M}/upstream/u0/server-group", {"name": "g0"})
    client.error("DELETE", f"{M}/server-group/g0", status=409)
    client.error("DELETE", f"{M}/server-group/g0?force=maybe", status=400)
    client.ok("DELETE", f"{M}/server-group/g0?force=true")
    assert client.ok("GET", f"{M}/upstream/u0/server-group") == []


@pytest.fixture
def backend() -> Iterator[Backend]:
    lt = LoopThread()
    try:
        yield Backend(lt, echo_handler)
    finally:
        lt.close()


def test_tcp_lb_with_statistics_and_channels(client: Client, backend: Backend) -> None:
    client.ok("POST", f"{M}/upstream", {"name": "u0"})
    client.ok("POST", f"{M}/server-group", {"name": "g0", **FAST_GROUP})
    client.ok(
        "POST",
        f"{M}/server-group/g0/server",
        {"name": "s0", "address": f"127.0.0.1:{backend.port}"},
    )
    client.ok("POST", f"{M}/upstream/u0/server-group", {"name": "g0"})
    wait_until(lambda: client.ok("GET", f"{M}/server-group/g0/server/s0")["currently-up"])
    client.ok(
        "POST",
        f"{M}/tcp-lb",
        {"name": "lb0", "address": "127.0.0.1:0", "upstream": "u0", "timeout": 60000},
    )
    assert client.ok("GET", f"{M}/tcp-lb") == ["lb0"]
    lb = client.ok("GET", f"{M}/tcp-lb/lb0")
    assert client.ok("GET", f"{M}/tcp-lb/lb0/detail") == lb
    host, _, port = lb["address"].rpartition(":")
    client.ok("PUT", f"{M}/tcp-lb/lb0", {"timeout": 30000, "in-buffer-size": 4096})
    assert client.ok("GET", f"{M}/tcp-lb/lb0")["timeout"] == 30000

    socks = client.ok("GET", f"{M}/tcp-lb/lb0/server-sock")
    assert socks == [lb["address"]]
    assert client.ok("GET", f"{M}/tcp-lb/lb0/server-sock/detail")[0]["name"] == socks[0]
    sock_path = f"{M}/tcp-lb/lb0/server-sock/{quote(socks[0], safe='')}"

    with socket.create_connection((host, int(port)), timeout=5) as c1:
        c1.sendall(b"hello")
        assert c1.recv(5) == b"hello"
        wait_until(lambda: len(client.ok("GET", f"{M}/tcp-lb/lb0/connection")) == 2)
        conns = client.ok("GET", f"{M}/tcp-lb/lb0/connection")
        details = client.ok("GET", f"{M}/tcp-lb/lb0/connection/detail")
        assert sorted(d["name"] for d in details) == sorted(conns)
        front = next(c for c in conns if c.startswith(f"127.0.0.1:{c1.getsockname()[1]}/"))
        conn_path = f"{M}/tcp-lb/lb0/connection/{quote(front, safe='')}"
        assert client.ok("GET", f"{conn_path}/bytes-in") == 5
        # (counted right after the relay step wrote them: the client may be first)
        wait_until(lambda: client.ok("GET", f"{conn_path}/bytes-out") == 5)
        assert client.ok("GET", f"{sock_path}/accepted-conn-count") == 1
        assert client.ok("GET", f"{sock_path}/bytes-in") >= 0
        assert client.ok("GET", f"{sock_path}/bytes-out") >= 0
        assert len(client.ok("GET", f"{sock_path}/connection")) == 2
        sessions = client.ok("GET", f"{M}/tcp-lb/lb0/session")
        assert len(sessions) == 1
        assert client.ok("GET", f"{M}/tcp-lb/lb0/session/detail")[0]["name"] == sessions[0]
        assert len(client.ok("GET", f"{M}/server-group/g0/server/s0/connection")) == 1
        el_path = f"{M}/event-loop-group/(worker-elg)/event-loop/(worker-el)"
        assert len(client.ok("GET", f"{el_path}/connection")) == 2

        # close it by its (percent-encoded) id
        client.ok("DELETE", conn_path)
        c1.settimeout(5)
        assert c1.recv(10) == b""
    wait_until(lambda: client.ok("GET", f"{M}/tcp-lb/lb0/session") == [])
    assert client.ok("GET", f"{M}/server-group/g0/server/s0/bytes-in") == 5

    with socket.create_connection((host, int(port)), timeout=5) as c2:
        c2.sendall(b"x")
        assert c2.recv(1) == b"x"
        wait_until(lambda: len(client.ok("GET", f"{M}/tcp-lb/lb0/session")) == 1)
        client.ok("DELETE", f"{M}/tcp-lb/lb0/session/{quote('/.*/', safe='')}")
        assert c2.recv(10) == b""
    client.error("DELETE", f"{M}/tcp-lb/lb0/session/nope", status=404)

    client.error("DELETE", f"{M}/upstream/u0", status=409)  # used by lb0
    client.ok("DELETE", f"{M}/tcp-lb/lb0")
    client.error("GET", f"{M}/tcp-lb/lb0", status=404)
    client.error("GET", f"{M}/tcp-lb/lb0/connection", status=404)


def test_dns_cache(client: Client) -> None:
    assert client.ok("GET", f"{M}/dns-cache") == []
    assert client.ok("GET", f"{M}/dns-cache/detail") == []
    client.ok("DELETE", f"{M}/dns-cache/{quote('/.*/', safe='')}")


UNSUPPORTED = [
    ("smart-group-delegate", {"name": "d0", "service": "svc", "zone": "z", "server-group": "g"}),
    ("smart-node-delegate", {"name": "n0", "service": "svc", "zone": "z", "port": 80, "nic": "lo"}),
]


def test_security_group_socks5_and_cert_key_crud(client: Client) -> None:
    client.ok("POST", f"{M}/security-group", {"name": "sg0", "default": "deny"})
    assert client.ok("GET", f"{M}/security-group/sg0")["default"] == "deny"
    client.ok("PUT", f"{M}/security-group/sg0", {"default": "allow"})
    assert client.ok("GET", f"{M}/security-group/sg0")["default"] == "allow"
    rule = {"name": "r0", "network": "10.0.0.0/8", "port-range": "22,22", "default": "deny"}
    client.ok("POST", f"{M}/security-group/sg0/security-group-rule", rule)
    assert client.ok("GET", f"{M}/security-group/sg0/security-group-rule") == ["r0"]
    client.error("POST", f"{M}/security-group/sg0/security-group-rule", rule, status=409)
    client.ok("POST", f"{M}/upstream", {"name": "u0"})
    s5 = {"name": "s5", "address": "127.0.0.1:0", "upstream": "u0", "security-group": "sg0"}
    client.ok("POST", f"{M}/socks5-server", s5)
    detail = client.ok("GET", f"{M}/socks5-server/s5")
    assert detail["security-group"] == "sg0"
    assert detail["allow-non-backend"] is False
    client.ok("PUT", f"{M}/socks5-server/s5", {"timeout": 5000})
    assert client.ok("GET", f"{M}/socks5-server/s5")["timeout"] == 5000
    client.error("DELETE", f"{M}/security-group/sg0", status=409)  # in use by s5
    client.ok("DELETE", f"{M}/socks5-server/s5")
    client.ok("DELETE", f"{M}/security-group/sg0/security-group-rule/r0")
    client.ok("DELETE", f"{M}/security-group/sg0")
    bad_ck = {"name": "ck0", "cert": ["/nonexistent.pem"], "key": "/nonexistent.key"}
    message = client.error("POST", f"{M}/cert-key", bad_ck, status=400)
    assert "/nonexistent.pem" in message
    assert client.ok("GET", f"{M}/cert-key") == []


@pytest.mark.parametrize(("path", "body"), UNSUPPORTED, ids=[p for p, _ in UNSUPPORTED])
def test_types_this_build_lacks_answer_cleanly(client: Client, path: str, body: Any) -> None:
    # The executor answers 501 Not Implemented for these; the body is a JSON error.
    for method, sub, payload in [
        ("POST", "", body),
        ("GET", "", None),
        ("GET", f"/{body['name']}", None),
        ("DELETE", f"/{body['name']}", None),
    ]:
        message = client.error(method, f"{M}/{path}{sub}", payload, status=501)
        assert "not" in message


def test_all_is_structured(client: Client) -> None:
    client.ok("POST", f"{M}/upstream", {"name": "u0"})
    client.ok("POST", f"{M}/server-group", {"name": "g0", **FAST_GROUP})
    client.ok("POST", f"{M}/server-group/g0/server", {"name": "s0", "address": "127.0.0.1:9"})
    client.ok("POST", f"{M}/upstream/u0/server-group", {"name": "g0", "weight": 4})
    everything = client.ok("GET", f"{M}/all")
    assert [u["name"] for u in everything["upstream"]] == ["u0"]
    attached = everything["upstream"][0]["children"]["server-group"]
    assert [(g["name"], g["weight"]) for g in attached] == [("g0", 4)]
    assert everything["server-group"][0]["children"]["server"][0]["name"] == "s0"
    assert {e["name"] for e in everything["event-loop-group"]} >= {"(worker-elg)"}
    assert everything["socks5-server"] == []
    client.error("POST", f"{M}/all", {}, status=405, valid=False)
    client.error("GET", f"{M}/all?x=1", status=400)


def test_config_is_read_only_text(client: Client) -> None:
    client.ok("POST", f"{M}/upstream", {"name": "u0"})
    resp = client.get("/api/v1/config")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    lines = resp.body.decode().splitlines()
    assert "add upstream u0" in lines
    for line in lines:
        parse(line)
    for method in ("POST", "PUT", "DELETE"):
        client.error(method, "/api/v1/config", status=405)


def test_config_refused_without_the_system_flag(loop_kind: str) -> None:
    app = Application.create_default()
    controller = HttpController("h", ("127.0.0.1", 0), Executor(app), app.control_el)
    try:
        controller.start()
        client = Client(controller.address, None)
        assert "System command refused" in client.error("GET", "/api/v1/config", status=403)
    finally:
        controller.stop()
        app.close()


# --------------------------------------------------------------------- bad input


def test_missing_or_wrong_token(client: Client) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ):
        for method, path in (
            ("GET", f"{M}/tcp-lb"),
            ("GET", "/api/v1/openapi.json"),
            ("GET", "/nope"),
            ("POST", f"{M}/upstream"),
        ):
            resp = client.raw(
                method,
                path,
                b'{"name": "u"}',
                {**headers, "Content-Type": "application/json"},
                auth=False,
            )
            assert resp.status == 401, (headers, path)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert resp.json()["code"] == 401
    assert client.ok("GET", f"{M}/upstream") == []  # nothing was created
    resp = client.raw("GET", f"{M}/upstream", headers={"Authorization": f"bearer {TOKEN}"})
    assert resp.status == 200


def big_chunks() -> Iterator[bytes]:
    yield b'{"name": "u", "x": "'
    for _ in range(MAX_BODY // 65536 + 1):
        yield b"a" * 65536
    yield b'"}'


BAD_BODIES: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
    ("unknown field", f"{M}/upstream", b'{"name": "u", "nope": 1}', {}, 400),
    (
        "alias, not long name",
        f"{M}/server-group/g/server",
        b'{"name": "s", "addr": "1.2.3.4:5"}',
        {},
        400,
    ),
    (
        "wrong type",
        f"{M}/server-group",
        b'{"name": "g", "timeout": "1", "period": 1, "up": 1, "down": 1}',
        {},
        400,
    ),
    (
        "boolean for int",
        f"{M}/server-group",
        b'{"name": "g", "timeout": true, "period": 1, "up": 1, "down": 1}',
        {},
        400,
    ),
    (
        "out of range",
        f"{M}/server-group",
        b'{"name": "g", "timeout": 0, "period": 1, "up": 1, "down": 1}',
        {},
        400,
    ),
    ("missing required", f"{M}/server-group", b'{"name": "g"}', {}, 400),
    ("missing name", f"{M}/upstream", b"{}", {}, 400),
    ("bad name", f"{M}/upstream", b'{"name": "a b"}', {}, 400),
    ("invalid json", f"{M}/upstream", b'{"name": ', {}, 400),
    ("not an object", f"{M}/upstream", b'["u"]', {}, 400),
    ("duplicate key", f"{M}/upstream", b'{"name": "a", "name": "b"}', {}, 400),
    ("nan", f"{M}/server-group", b'{"name": "g", "timeout": NaN}', {}, 400),
    ("not utf-8", f"{M}/upstream", b'{"name": "\xff"}', {}, 400),
    ("deep nesting", f"{M}/upstream", b'{"name": ' + b"[" * 50 + b"]" * 50 + b"}", {}, 400),
    ("very deep nesting", f"{M}/upstream", b"[" * 200_000 + b"]" * 200_000, {}, 400),
    ("huge body", f"{M}/upstream", b'{"name": "' + b"a" * MAX_BODY + b'"}', {}, 413),
    ("text/plain", f"{M}/upstream", b'{"name": "u"}', {"Content-Type": "text/plain"}, 415),
    ("no content type", f"{M}/upstream", b'{"name": "u"}', {"Content-Type": ""}, 415),
    (
        "latin-1",
        f"{M}/upstream",
        b'{"name": "u"}',
        {"Content-Type": "application/json; charset=latin-1"},
        415,
    ),
    ("empty body", f"{M}/upstream", b"", {}, 400),
    ("nothing to update", f"{M}/server-group/g", b"{}", {}, 400),
    ("uppercase choice", f"{M}/server-group/g", b'{"method": "WRR"}', {}, 400),
]


@pytest.mark.parametrize(
    ("what", "path", "body", "headers", "status"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_bad_bodies(
    client: Client, what: str, path: str, body: bytes | None, headers: dict[str, str], status: int
) -> None:
    method = "PUT" if path.endswith("/g") else "POST"
    hdrs = {"Content-Type": "application/json", **headers}
    if hdrs["Content-Type"] == "":
        del hdrs["Content-Type"]
    resp = client.raw(method, path, body, hdrs)
    assert resp.status == status, (what, resp.body[:300])
    assert resp.json()["code"] == status
    assert client.checker is not None
    try:
        decoded = json.loads(body or b"")
    except (ValueError, RecursionError):
        return
    if status == 400 and what != "duplicate key":  # JSON itself cannot say that
        # What the document can express, it refuses too.
        assert not client.checker.request_body_valid(method, path, decoded), what


def test_chunked_body_over_the_limit(client: Client) -> None:
    conn = http.client.HTTPConnection(*client.address, timeout=10)
    try:
        conn.request(
            "POST",
            f"{M}/upstream",
            body=big_chunks(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        r = conn.getresponse()
        assert r.status == 413
        assert json.loads(r.read())["code"] == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close before the client has sent everything
    finally:
        conn.close()
    assert client.ok("GET", f"{M}/upstream") == []


BAD_PATHS = [
    ("GET", "/nope", 404),
    ("GET", "/api/v1/module", 404),
    ("GET", f"{M}/", 404),
    ("GET", f"{M}/nope", 404),
    ("GET", f"{M}/tl", 404),
    ("GET", f"{M}/server", 404),
    ("GET", f"{M}/upstream/", 404),
    ("GET", f"{M}/tcp-lb/x/y/z", 404),
    ("GET", f"{M}/tcp-lb/%ff", 400),
    ("GET", f"{M}/tcp-lb/a%20b", 400),
    ("GET", f"{M}/tcp-lb/nope", 404),
    ("GET", f"{M}/tcp-lb?x=1", 400),
    ("DELETE", f"{M}/upstream/u?forced=true", 400),
    ("DELETE", f"{M}/dns-cache/x?force=true", 400),  # force-remove is its only removal
    ("DELETE", f"{M}/tcp-lb", 405),
    ("PATCH", f"{M}/tcp-lb/x", 405),
    ("HEAD", f"{M}/tcp-lb", 405),
    ("POST", "/healthz", 405),
    ("PUT", "/api/v1/openapi.json", 405),
]


@pytest.mark.parametrize(("method", "path", "status"), BAD_PATHS)
def test_bad_paths(client: Client, method: str, path: str, status: int) -> None:
    resp = client.raw(method, path)
    assert resp.status == status, resp.body
    if method != "HEAD":
        assert resp.json()["code"] == status
    if status == 405:
        assert resp.headers["Allow"]


# ------------------------------------------------------------------ life cycle


def test_bind_failure_raises_oserror(served: Served) -> None:
    other = HttpController("h1", served.controller.address, served.executor, served.app.control_el)
    with pytest.raises(OSError, match="in use"):
        other.start()
    other.stop()  # never started: a no-op


def test_stop_closes_the_listener_and_is_idempotent(loop_kind: str) -> None:
    app = Application.create_default()
    try:
        controller = HttpController("h", ("127.0.0.1", 0), Executor(app), app.control_el)
        controller.start()
        address = controller.address
        assert Client(address, None).get("/healthz").status == 200
        controller.stop()
        controller.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5).close()
    finally:
        app.close()


def test_stop_while_clients_connect_leaves_none_open(loop_kind: str) -> None:
    app = Application.create_default()
    try:

        def start() -> tuple[HttpController, tuple[str, int]]:
            c = HttpController("race", ("127.0.0.1", 0), Executor(app), app.control_el)
            c.start()
            return c, c.address

        assert_stop_leaves_no_client_connected(start, lambda c: c.stop())
    finally:
        app.close()


def test_started_and_stopped_from_the_loop_thread(loop_kind: str) -> None:
    # As when a RESP client runs "System: add http-controller ..." on the control loop.
    app = Application.create_default()
    try:
        el = app.control_el
        controller = HttpController("h", ("127.0.0.1", 0), Executor(app), el)
        el.call(controller.start)
        assert Client(controller.address, None).get("/healthz").status == 200
        el.call(controller.stop)
        wait_until(lambda: _refused(controller.address))
    finally:
        app.close()


def _refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_system_command_adds_and_removes_an_http_controller(loop_kind: str) -> None:
    app = Application.create_default()
    executor = Executor(app)
    try:
        reply = executor.execute(
            parse("System: add http-controller h2 address 127.0.0.1:0 token t"), Origin.STDIO
        )
        assert reply == OK, reply
        controller = app.http_controllers["h2"]
        client = Client(controller.address, "t")
        assert client.ok("GET", f"{M}/upstream") == []
        busy = executor.execute(
            parse(f"System: add http-controller h3 address 127.0.0.1:{controller.address[1]}"),
            Origin.STDIO,
        )
        assert isinstance(busy, ErrorReply)
        assert busy.http_status == 409
        assert executor.execute(parse("System: remove http-controller h2"), Origin.STDIO) == OK
        assert _refused(controller.address)
    finally:
        app.close()


def test_concurrent_clients(client: Client) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                client.ok("POST", f"{M}/upstream", {"name": f"u{i}-{j}"})
                client.ok("GET", f"{M}/upstream/u{i}-{j}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(client.ok("GET", f"{M}/upstream")) == 40
