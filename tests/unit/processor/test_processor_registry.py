"""Tests for the processor registry (vproxy.processor.base) and docs/processors.md.

The documentation's example processor and proxy loop are executed from the Markdown
itself, so the page cannot drift from the code.
"""

from __future__ import annotations

import ast
import random
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from test_processor_registry_sim import SimProxy, random_chunks

from vproxy.processor import base
from vproxy.processor.base import (
    ENTRY_POINT_GROUP,
    MAX_FRAME_SIZE_CEILING,
    BackendContext,
    ConnectionInfo,
    FrontendContext,
    Limits,
    Processor,
    ProcessorNotFound,
    RemoteProtocolError,
    get_processor,
    register_processor,
    registered_names,
    unregister_processor,
)
from vproxy.processor.dubbo import DubboProcessor
from vproxy.processor.framed_int32 import FramedInt32Processor

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "processors.md"
PROCESSOR_DIR = ROOT / "src" / "vproxy" / "processor"
MINE = ["base.py", "dubbo.py", "framed_int32.py"]


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no user processors and no plugins; nothing leaks out."""
    monkeypatch.setattr(base, "_registry", {})
    monkeypatch.setattr(base, "_entry_points", list)


class Dummy(Processor):
    __slots__ = ()

    def new_frontend(self, info: ConnectionInfo) -> FrontendContext:
        raise NotImplementedError

    def new_backend(self, info: ConnectionInfo) -> BackendContext:
        raise NotImplementedError


NOT_CALLABLE = 42


# -- names and lookups -------------------------------------------------------------


def test_builtins_are_there_and_reserved_names_are_not() -> None:
    assert registered_names() == ("dubbo", "framed-int32")
    assert isinstance(get_processor("dubbo"), DubboProcessor)
    assert isinstance(get_processor("framed-int32"), FramedInt32Processor)
    for name in ("tcp", "http/1.x", "h2", "http", "nope", "DUBBO", ""):
        with pytest.raises(ProcessorNotFound):
            get_processor(name)


def test_importing_base_loads_no_protocol() -> None:
    code = (
        "import sys, vproxy.processor.base as b;"
        "print(sorted(m for m in sys.modules if m.startswith('vproxy.processor.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['vproxy.processor.base']"


@pytest.mark.parametrize("name", ["line", "a", "0", "my.proto/v2_x-y", "x" * 64])
def test_register_and_unregister(name: str) -> None:
    register_processor(name, Dummy)
    assert name in registered_names()
    proc = get_processor(name, Limits(123))
    assert isinstance(proc, Dummy)
    assert proc.limits == Limits(123)
    assert get_processor(name).limits == Limits()
    unregister_processor(name)
    assert name not in registered_names()
    with pytest.raises(ProcessorNotFound):
        get_processor(name)


@pytest.mark.parametrize(
    "name",
    ["", "Line", "-x", ".x", "/x", "_x", "a b", "a\n", "é", "x" * 65, "a:b", None, 7],
)
def test_register_refuses_bad_names(name: Any) -> None:
    with pytest.raises(ValueError, match="must match"):
        register_processor(name, Dummy)


@pytest.mark.parametrize("name", ["tcp", "http/1.x", "h2", "http", "dubbo", "framed-int32"])
def test_register_refuses_taken_names(name: str) -> None:
    with pytest.raises(ValueError, match="taken"):
        register_processor(name, Dummy)


def test_register_refuses_duplicates() -> None:
    register_processor("line", Dummy)
    with pytest.raises(ValueError, match="taken"):
        register_processor("line", Dummy)


def test_register_refuses_non_callables() -> None:
    with pytest.raises(TypeError):
        register_processor("line", NOT_CALLABLE)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["dubbo", "framed-int32", "tcp"])
def test_unregister_refuses_builtins(name: str) -> None:
    with pytest.raises(ValueError, match="built in"):
        unregister_processor(name)


def test_unregister_unknown() -> None:
    with pytest.raises(ProcessorNotFound):
        unregister_processor("line")


def test_factory_must_return_a_processor() -> None:
    register_processor("bad", lambda limits: object())  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="object"):
        get_processor("bad")


@pytest.mark.parametrize("value", [0, -1, MAX_FRAME_SIZE_CEILING + 1, 2**31 - 1, True, 1.5, "1"])
def test_limits_refuse_bad_sizes(value: Any) -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        Limits(value)


def test_limits_accept_the_range() -> None:
    assert Limits(1).max_frame_size == 1
    assert Limits(MAX_FRAME_SIZE_CEILING).max_frame_size == 2**31 - 2


# -- plugins (entry points) ---------------------------------------------------------


def entry_point(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def test_entry_point_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = [
        entry_point("plug", "test_processor_registry:Dummy"),
        entry_point("broken", "no_such_module_for_vproxy_tests:Thing"),
        entry_point("dud", "test_processor_registry:NOT_CALLABLE"),
        entry_point("Bad Name", "test_processor_registry:Dummy"),
        entry_point("tcp", "test_processor_registry:Dummy"),
        entry_point("dubbo", "test_processor_registry:Dummy"),  # a built-in wins
    ]
    monkeypatch.setattr(base, "_entry_points", lambda: plugins)
    assert registered_names() == ("broken", "dubbo", "dud", "framed-int32", "plug")
    assert isinstance(get_processor("plug"), Dummy)
    plugins.clear()  # loaded once, then registered
    assert isinstance(get_processor("plug"), Dummy)
    assert isinstance(get_processor("dubbo"), DubboProcessor)
    for name in ("tcp", "Bad Name"):
        with pytest.raises(ProcessorNotFound):
            get_processor(name)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("no_such_module_for_vproxy_tests:Thing", "failed to load"),
        ("test_processor_registry:NOT_CALLABLE", "not callable"),
    ],
)
def test_broken_plugins_are_reported(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setattr(base, "_entry_points", lambda: [entry_point("plug", value)])
    with pytest.raises(ProcessorNotFound, match=message):
        get_processor("plug")


def test_real_entry_points_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real metadata lookup this time
    monkeypatch.setattr(base, "_registry", {})
    assert set(registered_names()) >= {"dubbo", "framed-int32"}


# -- hygiene ---------------------------------------------------------------------------


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


@pytest.mark.parametrize("filename", MINE)
def test_no_io_imports(filename: str) -> None:
    forbidden = {"asyncio", "socket", "selectors", "time", "threading"}
    for name in _imports(PROCESSOR_DIR / filename):
        assert name.split(".")[0] not in forbidden, f"{filename} imports {name}"
        assert not name.startswith(("vproxy.net", "vproxy.control")), name


@pytest.mark.parametrize("filename", MINE)
def test_module_docstring_says_what_it_owns_and_must_not(filename: str) -> None:
    doc = ast.get_docstring(ast.parse((PROCESSOR_DIR / filename).read_text())) or ""
    assert "Owns" in doc
    assert "Must not" in doc


# -- the documentation's example, run from the page ---------------------------------


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture
def doc_example() -> dict[str, Any]:
    """Execute every ``python`` block of docs/processors.md, in order, in one namespace."""
    blocks = doc_blocks()
    assert len(blocks) >= 3
    namespace: dict[str, Any] = {"__name__": "processors_doc"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    return namespace


def test_doc_example_runs_and_registers_line(doc_example: dict[str, Any]) -> None:
    assert "line" in registered_names()
    assert isinstance(get_processor("line"), doc_example["LineProcessor"])


def test_doc_loop_runs_the_builtins_too(doc_example: dict[str, Any]) -> None:
    proxy_in_memory = doc_example["proxy_in_memory"]
    frames = b"".join(len(p).to_bytes(4, "big") + p for p in (b"a", b"bc", b""))

    def shout(request: bytes) -> bytes:
        payload = request[4:].upper() + b"!"
        return len(payload).to_bytes(4, "big") + payload

    expected = b"".join(len(p).to_bytes(4, "big") + p for p in (b"A!", b"BC!", b"!"))
    assert proxy_in_memory("framed-int32", frames, shout) == expected


def test_doc_example_hints(doc_example: dict[str, Any]) -> None:
    fe = get_processor("line").new_frontend(ConnectionInfo())
    frames = fe.receive_data(b"@eu hello\n@ x\n@\nplain\n@us\n")
    assert [f.hint for f in frames] == ["eu", None, None, None, "us"]
    assert [f.stream_id for f in frames] == [0, 1, 2, 3, 4]


def test_doc_example_refuses_long_lines(doc_example: dict[str, Any]) -> None:
    fe = get_processor("line", Limits(10)).new_frontend(ConnectionInfo())
    assert fe.receive_data(b"0123456789\n")[0].data == b"0123456789\n"
    with pytest.raises(RemoteProtocolError):
        fe.receive_data(b"0123456789A")


class _Shouter:
    """A line server answering in order, a few lines at a time."""

    def __init__(self) -> None:
        self.buf = b""
        self.queue: list[bytes] = []

    def receive(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        self.queue.extend(line.upper() + b"\n" for line in lines)

    def respond(self, rng: random.Random) -> bytes:
        n = rng.randint(0, len(self.queue))
        out, self.queue = self.queue[:n], self.queue[n:]
        return b"".join(out)


def test_doc_example_spread_over_backends_by_hint(doc_example: dict[str, Any]) -> None:
    rng = random.Random(5)
    where = {"eu": 0, "us": 1}
    sim = SimProxy(
        get_processor("line"),
        [_Shouter() for _ in range(3)],
        rng,
        clients=2,
        pick=lambda frame: where.get(frame.hint or "", 2),
    )
    expected = [b"", b""]
    for i in range(300):
        c = rng.randrange(2)
        line = rng.choice([b"@eu ", b"@us ", b""]) + b"req %d\n" % i
        expected[c] += line.upper()
        for chunk in random_chunks(line, rng, 4):
            sim.from_client(c, chunk)
        if rng.random() < 0.3:
            sim.pump()
    sim.drain()
    assert [bytes(c.received) for c in sim.clients] == expected
    for _, b, frame in sim.frames:
        assert b == where.get(frame.hint or "", 2)
