"""TlsServerConfig over loopback, checked by clients nobody here wrote.

An asyncio TLS server (``asyncio.start_server(..., ssl=cfg.context)`` on port 0, run on
uvloop and on the standard loop) answers each connection with one line naming the SNI
it recorded, the ALPN result and the TLS version. ``openssl s_client`` and Python's own
ssl client connect to it and check the certificate chosen by SNI, the chain, ALPN and
that TLS 1.0/1.1 are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509

from tls_certs import CertAuthority, Leaf, fingerprint
from vproxy.component.cert_key import CertKey, TlsServerConfig, sni_server_name
from vproxy.net.event_loop import new_asyncio_loop

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")

SUBPROCESS_TIMEOUT = 20.0

T = TypeVar("T")

# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def leaves(pki: CertAuthority) -> dict[str, Leaf]:
    return {"a": pki.issue("a", ["a.test"]), "w": pki.issue("w", ["b.test", "*.wild.test"])}


def make_cfg(leaves: dict[str, Leaf], alpn: tuple[str, ...] = ()) -> TlsServerConfig:
    return TlsServerConfig(
        [CertKey(k, leaves[k].chain, str(leaves[k].key)) for k in ("a", "w")],
        alpn=alpn,
        handshake_timeout=5.0,
    )


@dataclass
class TlsServer:
    port: int
    loop: asyncio.AbstractEventLoop


async def _report(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    so = writer.get_extra_info("ssl_object")
    writer.write(
        f"sni={sni_server_name(so)} alpn={so.selected_alpn_protocol()} "
        f"version={so.version()}\n".encode()
    )
    try:
        await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@contextlib.contextmanager
def tls_server(ctx: ssl.SSLContext, handshake_timeout: float = 5.0) -> Iterator[TlsServer]:
    """A TLS server on 127.0.0.1:0 in its own loop thread; stopped on exit."""
    loop = new_asyncio_loop()  # uvloop or asyncio per the loop_kind fixture
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    async def start() -> Any:  # asyncio.Server, or uvloop's own Server
        return await asyncio.start_server(
            _report, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=handshake_timeout
        )

    async def stop(server: asyncio.AbstractServer) -> None:
        server.close()
        await server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    server = None
    try:
        server = run(start())
        yield TlsServer(server.sockets[0].getsockname()[1], loop)
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                run(stop(server))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def server(loop_kind: str, leaves: dict[str, Leaf]) -> Iterator[TlsServer]:
    cfg = make_cfg(leaves, alpn=("h2", "http/1.1"))
    with tls_server(cfg.context, cfg.handshake_timeout) as srv:
        assert ("uvloop" in type(srv.loop).__module__) == (loop_kind == "uvloop")
        yield srv


# ---------------------------------------------------------------------------
# openssl s_client


@dataclass
class SClient:
    returncode: int
    out: str

    @property
    def certs(self) -> list[x509.Certificate]:
        """The chain the server sent (``-showcerts``), leaf first."""
        blocks = re.findall(
            r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", self.out, re.S
        )
        return [x509.load_pem_x509_certificate(b.encode()) for b in blocks]

    @property
    def alpn(self) -> str | None:
        m = re.search(r"^ALPN protocol: (\S+)$", self.out, re.M)
        if m:
            return m.group(1)
        assert "No ALPN negotiated" in self.out, self.out
        return None

    @property
    def report(self) -> dict[str, str]:
        """The server's one-line answer: sni, alpn, version."""
        m = re.search(r"^sni=(\S+) alpn=(\S+) version=(\S+)$", self.out, re.M)
        assert m, self.out
        return dict(zip(("sni", "alpn", "version"), m.groups(), strict=True))

    @property
    def handshake_done(self) -> bool:
        return bool(re.search(r"^New, TLSv[\d.]+, Cipher is ", self.out, re.M))


def s_client(port: int, *args: str) -> SClient:
    assert OPENSSL is not None
    # -ign_eof: stdin is empty; keep reading until the server closes, so its report
    # line is in the output.
    proc = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts", "-ign_eof", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    return SClient(proc.returncode, proc.stdout.decode(errors="replace"))


def _sni_args(servername: str | None) -> list[str]:
    return ["-noservername"] if servername is None else ["-servername", servername]


@needs_openssl
@pytest.mark.parametrize(
    ("servername", "expected", "sni", "verify_name"),
    [
        ("a.test", "a", "a.test", "a.test"),
        ("b.test", "w", "b.test", "b.test"),
        ("x.wild.test", "w", "x.wild.test", "x.wild.test"),
        ("A.TEST", "a", "a.test", "a.test"),
        ("a.b.wild.test", "a", "a.b.wild.test", None),  # one label only: the default
        ("unknown.test", "a", "unknown.test", None),
        (None, "a", "None", None),
    ],
)
def test_openssl_gets_the_certificate_chosen_by_sni(
    server: TlsServer,
    pki: CertAuthority,
    leaves: dict[str, Leaf],
    servername: str | None,
    expected: str,
    sni: str,
    verify_name: str | None,
) -> None:
    args = [*_sni_args(servername), "-CAfile", str(pki.root_path), "-verify_return_error"]
    if verify_name:
        args += ["-verify_hostname", verify_name]
    r = s_client(server.port, *args)
    assert r.returncode == 0, r.out
    assert "Verify return code: 0 (ok)" in r.out
    leaf, *chain = r.certs
    assert fingerprint(leaf) == leaves[expected].fingerprint
    assert [fingerprint(c) for c in chain] == [fingerprint(pki.intermediate)]
    assert r.report["sni"] == sni


@needs_openssl
@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ("h2", "h2"),
        ("http/1.1", "http/1.1"),
        ("h2,http/1.1", "h2"),
        ("http/1.1,h2", "h2"),  # the server's order wins
        ("spdy/3", None),
        (None, None),
    ],
)
def test_openssl_alpn(server: TlsServer, offered: str | None, expected: str | None) -> None:
    alpn = ["-alpn", offered] if offered else []
    for servername in ("a.test", "x.wild.test"):  # default and switched context
        r = s_client(server.port, "-servername", servername, *alpn)
        assert r.returncode == 0, r.out
        assert r.alpn == expected
        assert r.report["alpn"] == str(expected)


@needs_openssl
def test_openssl_no_alpn_in_tcp_mode(loop_kind: str, leaves: dict[str, Leaf]) -> None:
    cfg = make_cfg(leaves)  # alpn=()
    with tls_server(cfg.context) as srv:
        r = s_client(srv.port, "-servername", "b.test", "-alpn", "h2,http/1.1")
    assert r.returncode == 0, r.out
    assert r.alpn is None
    assert r.report == {"sni": "b.test", "alpn": "None", "version": "TLSv1.3"}


@needs_openssl
@pytest.mark.parametrize(("flag", "version"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_openssl_tls12_and_13_accepted(server: TlsServer, flag: str, version: str) -> None:
    r = s_client(server.port, "-servername", "b.test", flag, "-alpn", "h2")
    assert r.returncode == 0, r.out
    assert r.handshake_done
    assert r.report == {"sni": "b.test", "alpn": "h2", "version": version}


# OpenSSL 3 clients will not even offer TLS 1.0/1.1 above security level 0.
_OLD_CIPHERS = "DEFAULT@SECLEVEL=0"


@needs_openssl
@pytest.mark.parametrize(("flag", "version"), [("-tls1_1", "TLSv1.1"), ("-tls1", "TLSv1")])
def test_openssl_old_tls_refused(
    server: TlsServer, leaves: dict[str, Leaf], flag: str, version: str
) -> None:
    args = ("-servername", "a.test", flag, "-cipher", _OLD_CIPHERS)
    r = s_client(server.port, *args)
    assert r.returncode != 0, r.out
    assert not r.handshake_done
    assert "Cipher is (NONE)" in r.out
    assert not r.certs
    assert "sni=" not in r.out

    # Control: the same client command does get through to a server that allows the
    # old version, so the refusal above is the minimum_version at work.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers(_OLD_CIPHERS)
    permissive.load_cert_chain(leaves["a"].chain[0], str(leaves["a"].key))
    with tls_server(permissive) as control:
        ok = s_client(control.port, *args)
    assert ok.returncode == 0, ok.out
    assert re.search(rf"^\s*Protocol\s*: {re.escape(version)}$", ok.out, re.M), ok.out


# ---------------------------------------------------------------------------
# Python's ssl client


def _py_client(
    port: int, cafile: Path, server_hostname: str
) -> tuple[x509.Certificate, dict[str, str]]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            buf += chunk
    m = re.fullmatch(rb"sni=(\S+) alpn=(\S+) version=(\S+)\n", buf)
    assert m, buf
    report = dict(zip(("sni", "alpn", "version"), (g.decode() for g in m.groups()), strict=True))
    return x509.load_der_x509_certificate(der), report


@pytest.mark.parametrize(
    ("host", "expected"), [("a.test", "a"), ("b.test", "w"), ("deep.wild.test", "w")]
)
def test_python_client_verifies_chain_and_name(
    server: TlsServer,
    pki: CertAuthority,
    leaves: dict[str, Leaf],
    host: str,
    expected: str,
) -> None:
    cert, report = _py_client(server.port, pki.root_path, host)
    assert fingerprint(cert) == leaves[expected].fingerprint
    assert report == {"sni": host, "alpn": "h2", "version": "TLSv1.3"}


def test_python_client_rejects_default_cert_for_unknown_name(
    server: TlsServer, pki: CertAuthority
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _py_client(server.port, pki.root_path, "a.b.wild.test")


def test_python_client_without_the_ca_fails(
    server: TlsServer, tmp_path: Path, pki: CertAuthority
) -> None:
    other = CertAuthority(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _py_client(server.port, other.root_path, "a.test")


def test_handshake_timeout_closes_silent_clients(loop_kind: str, leaves: dict[str, Leaf]) -> None:
    cfg = TlsServerConfig(make_cfg(leaves).cert_keys, handshake_timeout=0.3)
    with (
        tls_server(cfg.context, cfg.handshake_timeout) as srv,
        socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw,
    ):
        started = time.monotonic()
        try:
            data = raw.recv(1024)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - started
    assert data == b""
    assert 0.2 < elapsed < 5.0
