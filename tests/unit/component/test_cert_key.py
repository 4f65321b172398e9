"""CertKey loading/validation, SNI name rules and selection, TLS contexts in memory.

Handshakes here run over ``ssl.MemoryBIO`` pairs: no sockets, no event loop.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import ssl
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tls_certs import CertAuthority, Leaf, key_pem, new_key
from vproxy.component.cert_key import (
    CertKey,
    CertKeyError,
    TlsServerConfig,
    name_matches,
    normalize_server_name,
    sni_server_name,
)

# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def leaves(pki: CertAuthority) -> dict[str, Leaf]:
    return {
        "a": pki.issue("a", ["a.test"]),
        "w": pki.issue("w", ["b.test", "*.wild.test"]),
        "x": pki.issue("x", ["X.WILD.test"]),
        "dup": pki.issue("dup", ["a.test", "*.wild.test", "dup.test"]),
    }


def ck(leaf: Leaf, name: str = "ck") -> CertKey:
    return CertKey(name, leaf.chain, str(leaf.key))


@pytest.fixture(scope="module")
def cfg(leaves: dict[str, Leaf]) -> TlsServerConfig:
    """a (a.test), w (b.test, *.wild.test), x (x.wild.test exact), dup (repeats)."""
    return TlsServerConfig(
        [ck(leaves[k], k) for k in ("a", "w", "x", "dup")], alpn=["h2", "http/1.1"]
    )


# ---------------------------------------------------------------------------
# pure name rules


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("a.test", "a.test"),
        ("A.TeSt", "a.test"),
        ("a.test.", "a.test"),
        (" a.test ", "a.test"),
        ("*.Example.COM.", "*.example.com"),
        ("", ""),
        (".", ""),
    ],
)
def test_normalize_server_name(raw: str, norm: str) -> None:
    assert normalize_server_name(raw) == norm


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("a.test", "a.test", True),
        ("a.test", "A.TEST.", True),
        ("A.test.", "a.test", True),
        ("a.test", "b.test", False),
        ("a.test", "x.a.test", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "A.Example.Com.", True),
        ("*.Example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "*.example.com", False),
        ("*.example.com", "aexample.com", False),
        ("*.example.com", "a.example.org", False),
        ("f*.example.com", "foo.example.com", False),  # partial wildcards: unsupported
        ("*", "a", False),
        ("", "a.test", False),
        ("a.test", "", False),
    ],
)
def test_name_matches_table(pattern: str, name: str, expected: bool) -> None:
    assert name_matches(pattern, name) is expected


# A small alphabet so that equal names and shared suffixes come up often.
_label = st.text(alphabet="abxy09-", min_size=1, max_size=6)
_suffix = st.lists(_label, min_size=1, max_size=3).map(".".join)


def _mangle(name: str, data: st.DataObject) -> str:
    """Same name, random case and maybe a trailing dot."""
    mask = data.draw(st.integers(min_value=0, max_value=2 ** (len(name) + 1) - 1))
    out = "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(name))
    return out + ("." if mask >> len(name) & 1 else "")


@given(label=_label, suffix=_suffix, data=st.data())
def test_wildcard_matches_exactly_one_label(label: str, suffix: str, data: st.DataObject) -> None:
    pattern = _mangle("*." + suffix, data)
    assert name_matches(pattern, _mangle(f"{label}.{suffix}", data))


@given(labels=st.lists(_label, min_size=2, max_size=4), suffix=_suffix, data=st.data())
def test_wildcard_never_matches_more_labels(
    labels: list[str], suffix: str, data: st.DataObject
) -> None:
    name = ".".join([*labels, suffix])
    assert not name_matches(_mangle("*." + suffix, data), _mangle(name, data))


@given(suffix=_suffix, data=st.data())
def test_wildcard_never_matches_bare_suffix(suffix: str, data: st.DataObject) -> None:
    assert not name_matches(_mangle("*." + suffix, data), _mangle(suffix, data))


@given(a=_suffix, b=_suffix, data=st.data())
def test_exact_names_match_iff_equal_ignoring_case_and_dot(
    a: str, b: str, data: st.DataObject
) -> None:
    assert name_matches(_mangle(a, data), _mangle(b, data)) is (a == b)


# ---------------------------------------------------------------------------
# selection


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("a.test", "a"),
        ("A.TEST.", "a"),
        ("b.test", "w"),
        ("y.wild.test", "w"),
        ("Y.WILD.TEST", "w"),
        ("x.wild.test", "x"),  # exact beats an earlier wildcard
        ("X.wild.test.", "x"),
        ("dup.test", "dup"),
        ("a.b.wild.test", "a"),  # one label only: falls to the default
        ("wild.test", "a"),
        ("unknown.test", "a"),
        ("", "a"),
        (None, "a"),
        ("127.0.0.1", "a"),
    ],
)
def test_select_cert_key(cfg: TlsServerConfig, server_name: str | None, expected: str) -> None:
    assert cfg.select_cert_key(server_name).name == expected


def _reference_select(cfg: TlsServerConfig, server_name: str) -> CertKey:
    for c in cfg.cert_keys:
        if any(not n.startswith("*") and name_matches(n, server_name) for n in c.names):
            return c
    for c in cfg.cert_keys:
        if any(n.startswith("*.") and name_matches(n, server_name) for n in c.names):
            return c
    return cfg.cert_keys[0]


_pool_name = st.lists(
    st.sampled_from(["a", "b", "x", "y", "wild", "test", "dup", "A", "WILD", "Test"]),
    min_size=1,
    max_size=4,
).map(".".join)


@given(name=_pool_name, dot=st.booleans())
def test_select_agrees_with_reference_model(cfg: TlsServerConfig, name: str, dot: bool) -> None:
    name += "." if dot else ""
    assert cfg.select_cert_key(name) is _reference_select(cfg, name)


# ---------------------------------------------------------------------------
# loading and validation


def test_loads_names_subject_validity_fingerprint(leaves: dict[str, Leaf]) -> None:
    c = ck(leaves["w"], "w")
    assert c.names == ("b.test", "*.wild.test")
    assert c.subject == "CN=b.test,O=vproxy tests"
    assert c.fingerprint == leaves["w"].fingerprint
    assert c.not_before < dt.datetime.now(dt.UTC) < c.not_after
    assert not c.is_expired()
    assert c.is_expired(c.not_after + dt.timedelta(seconds=1))
    assert c.cert_paths == tuple(leaves["w"].chain)


def test_names_are_normalized_and_deduplicated(pki: CertAuthority) -> None:
    leaf = pki.issue("norm", ["Mixed.Case.Test.", "mixed.case.test", "other.test"])
    assert ck(leaf).names == ("mixed.case.test", "other.test")


def test_cn_is_the_fallback_without_san(pki: CertAuthority) -> None:
    leaf = pki.issue("cn-only", [], cn="CN.Only.Test")
    c = CertKey("cn", str(leaf.cert), str(leaf.key))  # a single path as a str
    assert c.names == ("cn.only.test",)
    assert c.cert_paths == (str(leaf.cert),)


def test_san_wins_over_cn(pki: CertAuthority) -> None:
    leaf = pki.issue("san-cn", ["san.test"], cn="cn.test")
    assert ck(leaf).names == ("san.test",)


def test_missing_cert_file(tmp_path: Path, leaves: dict[str, Leaf]) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(CertKeyError, match=r"cert-key m: cannot read certificate file .*nope\.pem"):
        CertKey("m", [str(missing)], str(leaves["a"].key))


def test_missing_chain_file(tmp_path: Path, leaves: dict[str, Leaf]) -> None:
    chain = [str(leaves["a"].cert), str(tmp_path / "chain.pem")]
    with pytest.raises(CertKeyError, match=r"cannot read certificate file .*chain\.pem"):
        CertKey("m", chain, str(leaves["a"].key))


def test_missing_key_file(tmp_path: Path, leaves: dict[str, Leaf]) -> None:
    with pytest.raises(CertKeyError, match=r"cannot read key file .*nokey\.pem"):
        CertKey("m", leaves["a"].chain, str(tmp_path / "nokey.pem"))


def test_directory_is_not_a_cert_file(tmp_path: Path, leaves: dict[str, Leaf]) -> None:
    with pytest.raises(CertKeyError, match="cannot read certificate file"):
        CertKey("m", [str(tmp_path)], str(leaves["a"].key))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage\n",
        b"-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n",
    ],
)
def test_garbage_cert_pem(tmp_path: Path, leaves: dict[str, Leaf], content: bytes) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    with pytest.raises(CertKeyError, match=r"bad\.pem holds no valid PEM certificate"):
        CertKey("g", [str(bad)], str(leaves["a"].key))


def test_key_file_given_as_cert(leaves: dict[str, Leaf]) -> None:
    with pytest.raises(CertKeyError, match="no valid PEM certificate"):
        CertKey("g", [str(leaves["a"].key)], str(leaves["a"].key))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
)
def test_garbage_key_pem(tmp_path: Path, leaves: dict[str, Leaf], content: bytes) -> None:
    bad = tmp_path / "bad.key"
    bad.write_bytes(content)
    with pytest.raises(CertKeyError, match=r"bad\.key holds no usable PEM private key") as ei:
        CertKey("g", leaves["a"].chain, str(bad))
    assert ei.value.__cause__ is None
    assert ei.value.__suppress_context__


def test_cert_given_as_key(leaves: dict[str, Leaf]) -> None:
    with pytest.raises(CertKeyError, match="no usable PEM private key"):
        CertKey("g", leaves["a"].chain, str(leaves["a"].cert))


def test_encrypted_key_is_refused(tmp_path: Path, pki: CertAuthority) -> None:
    key = new_key()
    leaf = pki.issue("enc", ["enc.test"], key=key)
    enc = tmp_path / "enc.key"
    enc.write_bytes(key_pem(key, password=b"secret"))
    with pytest.raises(CertKeyError, match=r"enc\.key is encrypted"):
        CertKey("e", leaf.chain, str(enc))


def test_key_mismatch_is_a_clear_error(leaves: dict[str, Leaf]) -> None:
    with pytest.raises(CertKeyError) as ei:
        CertKey("mm", leaves["a"].chain, str(leaves["w"].key))
    msg = str(ei.value)
    assert msg == (
        f"cert-key mm: private key {leaves['w'].key} does not match the certificate "
        f"in {leaves['a'].cert}"
    )
    assert "PRIVATE KEY" not in msg


def test_key_matching_only_the_chain_is_a_mismatch(pki: CertAuthority, tmp_path: Path) -> None:
    # The key of the intermediate (2nd cert) does not make the leaf usable.
    inter_key = tmp_path / "inter.key"
    inter_key.write_bytes(key_pem(pki.intermediate_key))
    leaf = pki.issue("ik", ["ik.test"])
    with pytest.raises(CertKeyError, match="does not match the certificate"):
        CertKey("ik", leaf.chain, str(inter_key))


def test_openssl_rejects_weak_key(pki: CertAuthority) -> None:
    leaf = pki.issue("weak", ["weak.test"], rsa_bits=1024)
    with pytest.raises(CertKeyError, match=r"OpenSSL rejects .*weak\.pem.*KEY_TOO_SMALL"):
        ck(leaf)


def test_rsa_2048_is_fine(pki: CertAuthority) -> None:
    assert ck(pki.issue("rsa", ["rsa.test"], rsa_bits=2048)).names == ("rsa.test",)


def test_expired_is_a_warning_not_an_error(
    pki: CertAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    leaf = pki.issue("old", ["old.test"], expired=True)
    with caplog.at_level(logging.WARNING, logger="vproxy.component"):
        c = CertKey("old", leaf.chain, str(leaf.key))
    assert c.is_expired()
    assert c.not_after < dt.datetime.now(dt.UTC)
    assert any(
        r.levelno == logging.WARNING and "expired" in r.getMessage() and "old" in r.getMessage()
        for r in caplog.records
    )
    # still usable for a listener
    assert TlsServerConfig([c]).select_cert_key("old.test") is c


def test_valid_cert_logs_nothing(leaves: dict[str, Leaf], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="vproxy"):
        ck(leaves["a"])
    assert caplog.records == []


def test_chain_out_of_order_warns(pki: CertAuthority, caplog: pytest.LogCaptureFixture) -> None:
    leaf = pki.issue("ooo", ["ooo.test"])
    with caplog.at_level(logging.WARNING, logger="vproxy.component"):
        CertKey("ooo", [str(leaf.cert), str(pki.root_path)], str(leaf.key))
    assert any("chain out of order" in r.getMessage() for r in caplog.records)


def test_bad_arguments(leaves: dict[str, Leaf]) -> None:
    with pytest.raises(CertKeyError, match="name must not be empty"):
        CertKey("", leaves["a"].chain, str(leaves["a"].key))
    with pytest.raises(CertKeyError, match="no certificate file"):
        CertKey("n", [], str(leaves["a"].key))


def test_key_material_never_shown(
    leaves: dict[str, Leaf], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    key_text = leaves["a"].key.read_text()
    body = "".join(key_text.splitlines()[1:-1])
    c = ck(leaves["a"], "a")
    texts = [repr(c), str(c), repr(TlsServerConfig([c]))]
    mangled = tmp_path / "mangled.key"  # a damaged copy of the real key
    mangled.write_text(key_text.replace(body[:8], "AAAAAAAA"))
    with caplog.at_level(logging.DEBUG):
        for bad_key in (leaves["w"].key, leaves["a"].cert, mangled):
            with pytest.raises(CertKeyError) as ei:
                CertKey("a", leaves["a"].chain, str(bad_key))
            texts.append(str(ei.value))
    texts += [r.getMessage() for r in caplog.records]
    for t in texts:
        assert "PRIVATE KEY" not in t
        assert body[:16] not in t
        assert body[-16:] not in t


def test_without_memfd_the_temp_files_are_removed(
    leaves: dict[str, Leaf], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    c = ck(leaves["w"])
    cfg = TlsServerConfig([ck(leaves["a"]), c])
    assert cfg.select_cert_key("b.test") is c
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# reload


def test_reload_swaps_in_new_material(pki: CertAuthority, tmp_path: Path) -> None:
    first = pki.issue("rl1", ["one.test"])
    cert, key = tmp_path / "rl.pem", tmp_path / "rl.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    c = CertKey("rl", [str(cert), str(pki.intermediate_path)], str(key))
    cfg = TlsServerConfig([c])
    assert c.fingerprint == first.fingerprint

    second = pki.issue("rl2", ["two.test"])
    cert.write_bytes(second.cert.read_bytes())
    key.write_bytes(second.key.read_bytes())
    c.reload()
    assert c.fingerprint == second.fingerprint
    assert c.names == ("two.test",)

    # a built config keeps serving what it snapshotted, until rebuilt
    assert _served_fingerprint(cfg, pki, "one.test") == first.fingerprint
    cfg2 = cfg.rebuild()
    assert cfg2 is not cfg
    assert cfg2.alpn == cfg.alpn
    assert cfg2.handshake_timeout == cfg.handshake_timeout
    assert _served_fingerprint(cfg2, pki, "two.test") == second.fingerprint


@pytest.mark.parametrize("broken", ["garbage-cert", "mismatch", "missing-key"])
def test_failed_reload_keeps_the_old_material(
    pki: CertAuthority, tmp_path: Path, broken: str
) -> None:
    first = pki.issue("frl1", ["one.test"])
    other = pki.issue("frl2", ["two.test"])
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    c = CertKey("frl", [str(cert), str(pki.intermediate_path)], str(key))
    if broken == "garbage-cert":
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ntrunc")
    elif broken == "mismatch":  # cert rotated, key not yet
        cert.write_bytes(other.cert.read_bytes())
    else:
        key.unlink()
    with pytest.raises(CertKeyError):
        c.reload()
    assert c.fingerprint == first.fingerprint
    assert c.names == ("one.test",)
    assert _served_fingerprint(TlsServerConfig([c]), pki, "one.test") == first.fingerprint


# ---------------------------------------------------------------------------
# TlsServerConfig settings


def test_contexts_settings(cfg: TlsServerConfig) -> None:
    assert len(cfg.contexts) == len(cfg.cert_keys) == 4
    assert cfg.context is cfg.contexts[0]
    for ctx in cfg.contexts:
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert not ctx.check_hostname
        assert ctx.verify_mode == ssl.CERT_NONE
    assert cfg.context.sni_callback is not None
    assert all(ctx.sni_callback is None for ctx in cfg.contexts[1:])
    assert cfg.handshake_timeout == 10.0


def test_config_validation(leaves: dict[str, Leaf]) -> None:
    a = ck(leaves["a"])
    with pytest.raises(CertKeyError, match="at least one cert-key"):
        TlsServerConfig([])
    for bad in ("", "é", "x" * 256):
        with pytest.raises(CertKeyError, match="invalid ALPN"):
            TlsServerConfig([a], alpn=[bad])
    for t in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(CertKeyError, match="handshake timeout"):
            TlsServerConfig([a], handshake_timeout=t)
    assert TlsServerConfig([a], handshake_timeout=2).handshake_timeout == 2.0


# ---------------------------------------------------------------------------
# handshakes in memory


def _pump(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str | None
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a client/server handshake over MemoryBIOs; returns (client, server)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = True
        for obj, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                done = False
            finally:
                if out.pending:
                    peer_in.write(out.read())
        if done:
            return client, server
    raise AssertionError("handshake did not finish")


def _client_ctx(pki: CertAuthority, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.root_path))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _served_fingerprint(cfg: TlsServerConfig, pki: CertAuthority, host: str) -> str:
    client, _ = _pump(cfg.context, _client_ctx(pki), host)
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize(
    ("host", "expected"),
    [("a.test", "a"), ("b.test", "w"), ("q.wild.test", "w"), ("x.wild.test", "x")],
)
def test_handshake_serves_the_selected_cert(
    cfg: TlsServerConfig, pki: CertAuthority, leaves: dict[str, Leaf], host: str, expected: str
) -> None:
    assert _served_fingerprint(cfg, pki, host) == leaves[expected].fingerprint


def test_sni_is_recorded_for_the_server_side(cfg: TlsServerConfig, pki: CertAuthority) -> None:
    client, server = _pump(cfg.context, _client_ctx(pki), "Q.Wild.Test")
    assert sni_server_name(server) == "q.wild.test"
    assert sni_server_name(client) is None
    assert sni_server_name(None) is None
    assert server.context is cfg.contexts[1]


def test_no_sni_gets_the_default(
    cfg: TlsServerConfig, pki: CertAuthority, leaves: dict[str, Leaf]
) -> None:
    cctx = _client_ctx(pki)
    cctx.check_hostname = False
    client, server = _pump(cfg.context, cctx, None)
    assert sni_server_name(server) is None
    der = client.getpeercert(binary_form=True)
    assert der is not None
    assert hashlib.sha256(der).hexdigest() == leaves["a"].fingerprint


def test_unknown_name_gets_default_and_fails_hostname_check(
    cfg: TlsServerConfig, pki: CertAuthority
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _pump(cfg.context, _client_ctx(pki), "unknown.test")


@pytest.mark.parametrize(
    ("offered", "expected"),
    [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (["spdy/3"], None), (None, None)],
)
def test_alpn_on_every_context(
    cfg: TlsServerConfig, pki: CertAuthority, offered: list[str] | None, expected: str | None
) -> None:
    for host in ("a.test", "b.test", "x.wild.test"):  # default and switched contexts
        client, server = _pump(cfg.context, _client_ctx(pki, offered), host)
        assert client.selected_alpn_protocol() == expected
        assert server.selected_alpn_protocol() == expected


def test_no_alpn_when_not_configured(leaves: dict[str, Leaf], pki: CertAuthority) -> None:
    plain = TlsServerConfig([ck(leaves["a"])])
    client, _ = _pump(plain.context, _client_ctx(pki, ["h2"]), "a.test")
    assert client.selected_alpn_protocol() is None


def test_tls12_is_accepted(cfg: TlsServerConfig, pki: CertAuthority) -> None:
    cctx = _client_ctx(pki)
    cctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client, server = _pump(cfg.context, cctx, "b.test")
    assert client.version() == server.version() == "TLSv1.2"
    assert sni_server_name(server) == "b.test"
