"""The HTTP controller (SPEC §3.2): the command language as REST + JSON.

Owns one listening socket on a control event loop served by aiohttp, and the mapping
from an HTTP request to a :class:`~vproxy.control.command.Command`: the route table
and the body schemas come from ``openapi.py`` (itself generated from the grammar
tables), every JSON value is written as its command-line word and read back with the
grammar's own value reader, and the whole command goes through
:func:`~vproxy.control.command.parse_words`, so a request is accepted exactly when
the same command typed on the console would be. It also owns the limits on what a
client may send (body size, JSON nesting, content type, bearer token) and the JSON
error bodies ``{"code": HTTP status, "message": text}`` every refusal gets.

Besides the API it serves what an operator watches: ``/metrics`` (Prometheus text,
same token as the API), ``/api/v1/status`` (the dashboard's JSON) and the dashboard
itself, static files under ``/ui/`` (no token: the page holds no data and asks for
the token when the API answers 401).

Must not: change state other than through the executor, run ``System:`` commands
other than the read-only ``list config`` (the executor refuses privileged ones from
:attr:`Origin.HTTP <vproxy.control.executor.Origin>` too), or log the token.
"""

from __future__ import annotations

import asyncio
import difflib
import hmac
import importlib.resources
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import quote, unquote

from aiohttp import web

from vproxy.control.command import (
    GRAMMAR,
    Action,
    Command,
    CommandError,
    CommandSyntaxError,
    ParamSpec,
    Ref,
    ResourceType,
    SystemCommand,
    SystemOp,
    ValueKind,
    parse_value,
    parse_words,
)
from vproxy.control.command.errors import show_word
from vproxy.control.command.grammar import (
    ACTION_PREPOSITION,
    NAME_RULES,
    RESERVED_WORDS,
    TYPE_BY_WORD,
    NameKind,
    NameUse,
    Preposition,
)
from vproxy.control.executor import Origin
from vproxy.control.listening import ListeningController
from vproxy.control.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from vproxy.control.openapi import (
    API_PREFIX,
    MODULE_PREFIX,
    ROUTES,
    Operation,
    Route,
    Shape,
    children_of,
    openapi_document,
    top_level_types,
)
from vproxy.control.reply import Array, ErrorReply, JsonValue, Reply, String, to_json
from vproxy.net.event_loop import EventLoop

__all__ = [
    "MAX_BODY",
    "MAX_JSON_DEPTH",
    "METRICS_PATH",
    "STATUS_PATH",
    "UI_PREFIX",
    "HttpController",
    "HttpError",
    "HttpExecutor",
    "ModuleRequest",
    "command_for",
    "decode_body",
    "module_segments",
    "resolve",
]

_log = logging.getLogger("vproxy.control")

MAX_BODY: Final = 1024 * 1024
"""Largest request body accepted; a larger one is answered 413."""
MAX_JSON_DEPTH: Final = 4
"""Deepest nesting of arrays/objects accepted in a body (the grammar needs 2)."""

METRICS_PATH: Final = "/metrics"
STATUS_PATH: Final = API_PREFIX + "/status"
UI_PREFIX: Final = "/ui/"
_UI_FILES: Final = {
    "index.html": "text/html",
    "style.css": "text/css",
    "app.js": "text/javascript",
}
# The page loads only its own files and talks only to this origin.
_UI_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_STOP_TIMEOUT = 10.0
_SHUTDOWN_GRACE = 2.0
_DETAIL = "detail"
_POSITION = re.compile(r" at position \d+")


class HttpExecutor(Protocol):
    """What the controller needs from the executor."""

    def execute(self, cmd: Command | SystemCommand, origin: Origin) -> Reply:
        """Run a command; errors come back as :class:`ErrorReply`."""

    def detail(self, cmd: Command) -> Sequence[Mapping[str, object]]:
        """Structured ``list-detail``; raises :class:`CommandError`."""

    def status(self) -> dict[str, JsonValue]:
        """The dashboard's status JSON."""

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition."""


class HttpError(Exception):
    """A request refused by the HTTP layer itself (not by the command language).

    Attributes:
        status: The HTTP status, 4xx.
        message: One line for the JSON body.
        headers: Extra response headers (``Allow``, ``WWW-Authenticate``).
    """

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, JsonValue]:
        """The JSON error body."""
        return {"code": self.status, "message": self.message}


# ------------------------------------------------------------------- path resolution


@dataclass(frozen=True, slots=True)
class ModuleRequest:
    """A resolved ``/api/v1/module/...`` request.

    Attributes:
        route: The route matched.
        operation: The method's operation on it.
        parents: The parents named in the path, nearest first.
        name: The resource named last in the path (ITEM and ITEM_DETAIL shapes).
    """

    route: Route
    operation: Operation
    parents: tuple[Ref, ...]
    name: str | None


def module_segments(raw_path: str) -> list[str] | None:
    """Split a raw (still percent-encoded) path into decoded module segments.

    Args:
        raw_path: The request path without the query, e.g.
            ``/api/v1/module/tcp-lb/lb0/connection/1.2.3.4%3A5%2F6.7.8.9%3A10``.

    Returns:
        The decoded segments after ``/api/v1/module/`` (``%2F`` becomes ``/`` inside
        a segment), or None when the path is not under the module prefix.

    Raises:
        HttpError: 400 when a segment is not valid percent-encoded UTF-8.
    """
    prefix = MODULE_PREFIX + "/"
    if not raw_path.startswith(prefix):
        return None
    out: list[str] = []
    for raw in raw_path[len(prefix) :].split("/"):
        try:
            out.append(unquote(raw, errors="strict"))
        except UnicodeDecodeError:
            raise HttpError(400, "the path is not valid percent-encoded UTF-8") from None
    return out


def _type_at(segment: str) -> ResourceType:
    type_ = TYPE_BY_WORD.get(segment)
    if type_ is None or type_.value != segment:
        raise HttpError(404, f"no such resource type in the path: {show_word(segment)}")
    return type_


def resolve(segments: Sequence[str], method: str) -> ModuleRequest:
    """Find the route and operation a module path and method address.

    Args:
        segments: From :func:`module_segments`, e.g. ``["upstream", "u0",
            "server-group"]``: types and names alternate, parents outermost first.
        method: The HTTP method.

    Returns:
        The resolved request.

    Raises:
        HttpError: 404 for a path no route has, 405 (with ``Allow``) for a method the
            route does not have.
    """
    n = len(segments)
    if n == 0 or any(not s for s in segments):
        raise HttpError(404, "no such path: empty path segment")
    name: str | None = None
    if n % 2 == 1 and segments[-1] == _DETAIL and n >= 3:
        shape, type_, name, pairs = Shape.ITEM_DETAIL, segments[-3], segments[-2], segments[:-3]
    elif n % 2 == 1:
        shape, type_, pairs = Shape.COLLECTION, segments[-1], segments[:-1]
    else:
        shape, type_, name, pairs = Shape.ITEM, segments[-2], segments[-1], segments[:-2]
    target = _type_at(type_)
    refs = [Ref(_type_at(pairs[i]), pairs[i + 1]) for i in range(0, len(pairs), 2)]
    parents = tuple(reversed(refs))
    chain = tuple(ref.type for ref in parents)
    if shape is Shape.ITEM and name == _DETAIL and GRAMMAR[target].observable and method == "GET":
        shape, name = Shape.LIST_DETAIL, None
    route = ROUTES.get((target, chain, shape))
    if route is None:
        where = " in ".join(f"{t.value}" for t in (target, *chain))
        raise HttpError(404, f"no such path: nothing is addressed as {where} here")
    operation = route.operations.get(method)
    if operation is None:
        raise HttpError(
            405,
            f"method {method} is not allowed here; allowed: {route.allow}",
            {"Allow": route.allow},
        )
    return ModuleRequest(route, operation, parents, name)


# -------------------------------------------------------------------- JSON -> Command


def decode_body(body: bytes, content_type: str, charset: str | None) -> dict[str, object]:
    """Read a request body as a JSON object, within the limits.

    Args:
        body: The raw body (already limited to :data:`MAX_BODY`).
        content_type: The media type of the ``Content-Type`` header, lower case.
        charset: Its charset parameter, if any.

    Returns:
        The object, keys in order.

    Raises:
        HttpError: 415 for a content type other than ``application/json`` in UTF-8;
            413 for a body over :data:`MAX_BODY`; 400 for text that is not UTF-8 or not
            JSON, a duplicate key, NaN/Infinity, nesting deeper than
            :data:`MAX_JSON_DEPTH`, or a value that is not an object.
    """
    if content_type != "application/json" or (charset or "utf-8").lower() not in ("utf-8", "utf8"):
        raise HttpError(415, "expected Content-Type: application/json (UTF-8)")
    if len(body) > MAX_BODY:
        raise HttpError(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "the body is not valid UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise HttpError(400, f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, duplicate keys, huge integers
        raise HttpError(400, f"invalid JSON: {exc}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise HttpError(400, f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(value, dict):
        raise HttpError(400, f"the body must be a JSON object, not {_json_type(value)}")
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {show_word(key)}")
        out[key] = value
    return out


def _no_constant(word: str) -> object:
    raise ValueError(f"{word} is not a JSON number")


def _depth(value: object) -> int:
    depth = 0
    level: list[object] = [value]
    while level:
        nxt: list[object] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
        if not any(isinstance(item, dict | list) for item in level):
            break
        depth += 1
        level = nxt
    return depth


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(field: str, expected: str, value: object) -> CommandSyntaxError:
    return CommandSyntaxError(
        f"field {show_word(field)} must be {expected}, not {_json_type(value)}", word=field
    )


def _value_word(spec: ParamSpec, value: object) -> str:
    """The command-line word of a JSON value, checked as the schema and parser do."""
    kind = spec.kind
    word: str
    if kind is ValueKind.INT:
        # JSON Schema counts 10.0 as an integer; so do we.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(spec.name, f"an integer ({spec.value_help})", value)
        word = str(value)
    elif kind in (ValueKind.NAME_LIST, ValueKind.PATH_LIST):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _wrong_type(spec.name, "an array of strings", value)
        if not value:
            raise CommandSyntaxError(f"field {show_word(spec.name)} needs at least one item")
        for item in value:
            if "," in item:
                raise CommandSyntaxError(
                    f"invalid value {show_word(item)} in {spec.name}: an item cannot hold ','"
                )
        word = ",".join(value)
    elif kind is ValueKind.JSON_OBJECT:
        if not isinstance(value, dict):
            raise _wrong_type(spec.name, "an object of strings", value)
        word = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        if not isinstance(value, str):
            raise _wrong_type(spec.name, f"a string ({spec.value_help})", value)
        word = value
    parsed = parse_value(spec, word)
    # The console folds case for choices and protocols; JSON takes the canonical
    # spelling only, as the OpenAPI enums and patterns say.
    if kind in (ValueKind.CHOICE, ValueKind.PROTOCOL) and str(parsed) != word:
        raise CommandSyntaxError(
            f"invalid value {show_word(word)} for {spec.name}: expected {spec.value_help}"
            + (" in lower case" if kind is ValueKind.PROTOCOL else ""),
            word=word,
        )
    return word


def _check_name(word: str, kind: NameKind, what: str, use: NameUse) -> None:
    if use is NameUse.REQUIRED_OR_PATTERN and len(word) >= 2 and word[0] == word[-1] == "/":
        return  # a /regex/: parse_words compiles it
    rule = NAME_RULES[kind]
    if word in RESERVED_WORDS:
        raise CommandSyntaxError(f"{show_word(word)} is a reserved word and cannot be a name")
    if len(word) > rule.max_length or rule.pattern.fullmatch(word) is None:
        raise CommandSyntaxError(
            f"invalid {what} {show_word(word)}: expected {rule.description}", word=word
        )


def command_for(
    request: ModuleRequest,
    body: Mapping[str, object] | None = None,
    *,
    force: bool = False,
) -> Command:
    """Build the command a resolved request stands for.

    The body's values are written as command-line words and the whole command is read
    by :func:`~vproxy.control.command.parse_words`, so every check the console makes
    (ranges, names, required parameters, exclusive flags, "nothing to update") is made
    here too, with the same messages minus word positions.

    Args:
        request: From :func:`resolve`.
        body: The JSON body of POST and PUT; ignored for other methods.
        force: DELETE with ``force=true``: run ``force-remove`` instead of ``remove``.

    Returns:
        The command.

    Raises:
        CommandError: The request does not make a valid command (HTTP 400).
    """
    route, op = request.route, request.operation
    form = op.force_form if force and op.force_form is not None else op.form
    action = Action.FORCE_REMOVE if force and op.force_form is not None else op.action
    type_ = route.type
    for ref in request.parents:
        _check_name(
            ref.name, GRAMMAR[ref.type].name_kind, f"{ref.type.value} name", NameUse.REQUIRED
        )
    name = request.name
    context = f"{action.value} {type_.value}"
    fields: dict[str, object] = {}
    if op.method in ("POST", "PUT"):
        fields = dict(body or {})
        allowed = [*(["name"] if action is Action.ADD else []), *(s.name for s in form.params)]
        allowed += [f.name for f in form.flags]
        for key in fields:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {show_word(close[0])}?" if close else ""
                expected = ", ".join(allowed) if allowed else "none"
                raise CommandSyntaxError(
                    f"unknown field {show_word(key)} for {context}; expected one of: "
                    f"{expected}{hint}",
                    word=key,
                )
        if action is Action.ADD:
            if "name" not in fields:
                raise CommandSyntaxError(f'missing field "name" for {context}')
            raw_name = fields.pop("name")
            if not isinstance(raw_name, str):
                raise _wrong_type("name", "a string", raw_name)
            name = raw_name
    if name is not None:
        _check_name(name, GRAMMAR[type_].name_kind, f"{type_.value} name", form.name)
    words = [action.value, type_.value]
    if name is not None:
        words.append(name)
    for index, ref in enumerate(request.parents):
        preposition = ACTION_PREPOSITION[action] if index == 0 else Preposition.IN
        words += [preposition.value, ref.type.value, ref.name]
    for key, value in fields.items():
        spec = form.param(key)
        if spec is not None:
            words += [spec.name, _value_word(spec, value)]
        elif not isinstance(value, bool):
            raise _wrong_type(key, "a boolean", value)
        elif value:
            words.append(key)
    try:
        parsed = parse_words(words)
    except CommandSyntaxError as exc:
        # Positions count words the client never wrote.
        raise CommandSyntaxError(_POSITION.sub("", exc.message), word=exc.word) from exc
    if not isinstance(parsed, Command):  # words[0] is an action: cannot happen
        raise CommandSyntaxError(f"{context} is not a resource command")
    return parsed


def _force(query: Mapping[str, str], keys: Sequence[str], op: Operation) -> bool:
    allowed = ("force",) if op.force_form is not None else ()
    for key in keys:
        if key not in allowed:
            raise HttpError(400, f"unknown query parameter {show_word(key)}")
    if len(keys) > len(set(keys)):
        raise HttpError(400, "a query parameter is given twice")
    value = query.get("force")
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise HttpError(400, f"query parameter force must be true or false, not {show_word(value)}")


# ---------------------------------------------------------------------- the server

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_response(
    status: int, value: JsonValue, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    response = web.Response(
        status=status, body=body, content_type="application/json", headers=headers
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json_response(status, {"code": status, "message": message}, headers)


class HttpController(ListeningController):
    """A REST + JSON controller on one address.

    Requests run one at a time on the controller's event loop, like RESP commands;
    the executor serialises them with every other controller's.
    """

    def __init__(
        self,
        name: str,
        address: tuple[str, int],
        executor: HttpExecutor,
        el: EventLoop,
        token: str | None = None,
    ) -> None:
        """Create a stopped controller.

        Args:
            name: The controller's name in the command language.
            address: ``(host, port)`` to listen on; port 0 picks a free port.
            executor: Runs the commands.
            el: The event loop that serves the listener and every client.
            token: The bearer token clients must send; ``None`` or ``""`` for none.
        """
        super().__init__("http-controller", name, address, el)
        self.executor = executor
        self._token = token.encode("utf-8", "surrogateescape") if token else None
        self._runner: web.AppRunner | None = None
        self._cleanup: asyncio.Task[None] | None = None
        self._openapi = json.dumps(
            openapi_document(bearer=self._token is not None), separators=(",", ":")
        ).encode("ascii")
        self._ui = _load_ui()

    # -- life cycle ---------------------------------------------------------------
    async def _serve(self, sock: socket.socket) -> None:
        runner = web.AppRunner(
            self._application(), access_log=None, shutdown_timeout=_SHUTDOWN_GRACE
        )
        await runner.setup()
        factory = runner.server
        if factory is None:  # setup() always sets it
            raise RuntimeError("aiohttp runner has no server")
        if not self._listen(sock, factory):  # stopped before it began
            await runner.cleanup()
            return
        self._runner = runner

    def _run_stop(self, close: Callable[[], None]) -> None:
        # The aiohttp runner's clean-up closes the client connections (waiting up to
        # _SHUTDOWN_GRACE for requests in flight). From another thread this waits for
        # it; from the loop's own thread the listener closes at once and connections
        # shortly after.
        runner, self._runner = self._runner, None

        async def _shutdown() -> None:
            close()
            if runner is not None:
                await runner.cleanup()

        if not self.el.alive:
            close()  # (a dead loop took its transports with it)
            return
        if self.el.in_loop_thread:
            close()
            if runner is not None:
                self._cleanup = self.el.loop.create_task(runner.cleanup())
            return
        try:
            self.el.run_coroutine(_shutdown()).result(_STOP_TIMEOUT)
        except (RuntimeError, TimeoutError):
            close()  # the loop stopped meanwhile

    # -- the aiohttp application --------------------------------------------------------
    def _application(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY, middlewares=[self._errors_middleware, self._auth_middleware]
        )
        app.router.add_get("/healthz", self._healthz, allow_head=False)
        app.router.add_get(API_PREFIX + "/openapi.json", self._openapi_json, allow_head=False)
        app.router.add_get(API_PREFIX + "/config", self._config, allow_head=False)
        app.router.add_get(STATUS_PATH, self._status, allow_head=False)
        app.router.add_get(METRICS_PATH, self._metrics, allow_head=False)
        app.router.add_get(UI_PREFIX.rstrip("/"), self._ui_redirect, allow_head=False)
        app.router.add_get(UI_PREFIX + "{file:.*}", self._ui_file, allow_head=False)
        app.router.add_route("*", MODULE_PREFIX + "/{tail:.*}", self._module)
        return app

    @web.middleware
    async def _errors_middleware(
        self, request: web.Request, handler: _Handler
    ) -> web.StreamResponse:
        # Every refusal is JSON, whoever raised it: us, the router (404/405) or aiohttp
        # (413 from client_max_size).
        try:
            return await handler(request)
        except HttpError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except CommandError as exc:
            return _error(exc.http_status, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            message = exc.reason
            if exc.status == 404:
                message = f"no such path: {show_word(request.path)}"
            elif exc.status == 413:
                message = f"the body is larger than {MAX_BODY} bytes"
            return _error(exc.status, message, headers)
        except Exception:
            _log.exception(
                "http-controller %s: %s %s failed", self.name, request.method, request.path
            )
            return _error(500, "internal error")

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if self._token is not None and not _public(request.path):
            values = request.headers.getall("Authorization", [])
            given = b""
            if len(values) == 1:
                scheme, _, credentials = values[0].partition(" ")
                if scheme.lower() == "bearer":
                    given = credentials.strip().encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, self._token):
                raise HttpError(
                    401,
                    "missing or wrong bearer token",
                    {"WWW-Authenticate": 'Bearer realm="vproxy"'},
                )
        return await handler(request)

    # -- handlers -------------------------------------------------------------------------
    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return _json_response(200, {"status": "ok"})

    async def _openapi_json(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._openapi, content_type="application/json")

    async def _status(self, request: web.Request) -> web.StreamResponse:
        self._no_query(request)
        return _json_response(200, self.executor.status())

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body = self.executor.metrics_text()
        response = web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _ui_redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(UI_PREFIX)

    async def _ui_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"] or "index.html"
        found = self._ui.get(name)
        if found is None:
            raise HttpError(404, f"no such path: {show_word(request.path)}")
        body, content_type = found
        response = web.Response(body=body, headers=_UI_HEADERS)
        response.content_type = content_type
        response.charset = "utf-8"
        return response

    async def _config(self, request: web.Request) -> web.StreamResponse:
        reply = self.executor.execute(SystemCommand(SystemOp.LIST_CONFIG), Origin.HTTP)
        if isinstance(reply, ErrorReply):
            return _json_response(reply.http_status, to_json(reply))
        lines = reply.items if isinstance(reply, Array) else (reply,)
        text = "".join(f"{item.value}\n" for item in lines if isinstance(item, String))
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _module(self, request: web.Request) -> web.StreamResponse:
        segments = module_segments(request.rel_url.raw_path)
        if segments is None:
            raise HttpError(404, "no such path")
        if segments == ["all"]:
            if request.method != "GET":
                raise HttpError(
                    405, f"method {request.method} is not allowed here", {"Allow": "GET"}
                )
            self._no_query(request)
            return _json_response(200, self._all())
        resolved = resolve(segments, request.method)
        op = resolved.operation
        query = request.rel_url.query
        force = _force(query, list(query.keys()), op)
        body: dict[str, object] | None = None
        if op.method in ("POST", "PUT"):
            if request.content_length is not None and request.content_length > MAX_BODY:
                raise HttpError(413, f"the body is larger than {MAX_BODY} bytes")
            raw = await request.read()
            body = decode_body(raw, request.content_type, request.charset)
        cmd = command_for(resolved, body, force=force)
        shape = resolved.route.shape
        if op.method == "GET" and shape in (Shape.ITEM, Shape.ITEM_DETAIL):
            items = self.executor.detail(cmd)
            if not items:
                raise HttpError(404, f"{cmd.type.value} {cmd.name} not found")
            obj = dict(items[0])
            if shape is Shape.ITEM_DETAIL:
                obj = self._expand(cmd.type, cmd.parents, obj)
            return _json_response(200, _jsonable(obj))
        if op.method == "GET" and shape is Shape.LIST_DETAIL:
            return _json_response(200, [_jsonable(dict(d)) for d in self.executor.detail(cmd)])
        reply = self.executor.execute(cmd, Origin.HTTP)
        if isinstance(reply, ErrorReply):
            return _json_response(reply.http_status, to_json(reply))
        if op.method == "POST" and isinstance(cmd.name, str):
            location = f"{request.rel_url.raw_path}/{quote(cmd.name, safe='')}"
            return _json_response(201, to_json(reply), {"Location": location})
        return _json_response(200, to_json(reply))

    @staticmethod
    def _no_query(request: web.Request) -> None:
        for key in request.rel_url.query:
            raise HttpError(400, f"unknown query parameter {show_word(key)}")

    def _expand(
        self, type_: ResourceType, parents: tuple[Ref, ...], obj: dict[str, object]
    ) -> dict[str, object]:
        """Add ``"children": {type: [objects]}`` for every configured child type."""
        name = obj.get("name")
        kids = children_of(type_, tuple(ref.type for ref in parents))
        if not isinstance(name, str) or not kids:
            return obj
        inner = (Ref(type_, name), *parents)
        children: dict[str, object] = {}
        for child in kids:
            cmd = Command(Action.LIST_DETAIL, child, None, inner)
            children[child.value] = [
                self._expand(child, inner, dict(item)) for item in self.executor.detail(cmd)
            ]
        obj["children"] = children
        return obj

    def _all(self) -> JsonValue:
        out: dict[str, JsonValue] = {}
        for type_ in top_level_types():
            try:
                items = self.executor.detail(Command(Action.LIST_DETAIL, type_))
            except CommandError as exc:
                if exc.http_status == 501:  # not in this build: nothing to show
                    continue
                raise
            out[type_.value] = [_jsonable(self._expand(type_, (), dict(i))) for i in items]
        return out


def _public(path: str) -> bool:
    """Paths served without the token: liveness and the dashboard's static files."""
    return path == "/healthz" or path == UI_PREFIX.rstrip("/") or path.startswith(UI_PREFIX)


def _load_ui() -> dict[str, tuple[bytes, str]]:
    """The dashboard's files (package data), read once: name -> (body, media type)."""
    root = importlib.resources.files("vproxy.control") / "ui"
    return {name: ((root / name).read_bytes(), media) for name, media in _UI_FILES.items()}


def _jsonable(value: object) -> JsonValue:
    """Check (for mypy and for safety) that an executor's detail is plain JSON."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
