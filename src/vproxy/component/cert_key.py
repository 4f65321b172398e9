"""Certificates and the TLS server context (SPEC §1 "CertKey", TcpLB ``cert-key``).

Owns: loading and validating a PEM certificate chain plus its private key
(:class:`CertKey`), the pure SNI name rules (:func:`normalize_server_name`,
:func:`name_matches`), and the ``ssl.SSLContext`` objects a TLS-terminating listener
hands to asyncio (:class:`TlsServerConfig`): one context per cert-key, TLS 1.2 at
least, ALPN, and an SNI callback that switches to the right cert-key. After the
handshake the name the client sent is available from :func:`sni_server_name`.

Must not: open sockets or run handshakes; write key material anywhere but memory (the
one exception: without ``memfd_create``, a 0600 temp file lives for one
``load_cert_chain`` call); log, format or raise with key material: errors name the file
and the problem only.

Thread model: a :class:`CertKey` keeps its validated material in one immutable
snapshot that :meth:`CertKey.reload` swaps in a single assignment, so readers on
worker loops always see a whole old or a whole new cert-key. A
:class:`TlsServerConfig` is immutable: it snapshots its cert-keys when built, and a
reload is picked up by building a new one (:meth:`TlsServerConfig.rebuild`) and
swapping the owner's reference; handshakes already under way keep the old contexts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import math
import os
import ssl
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

# cryptography is imported where certificates are read, not here: it adds about
# 10 MiB to every process, and most (a plain tcp-lb) never load a cert-key.

__all__ = [
    "CertKey",
    "CertKeyError",
    "TlsServerConfig",
    "name_matches",
    "normalize_server_name",
    "sni_server_name",
]

_log = logging.getLogger("vproxy.component")


class CertKeyError(ValueError):
    """A certificate, key or TLS setting that cannot be used.

    The message names the cert-key, the file and the problem, never key bytes.
    """


# ---------------------------------------------------------------------------
# Pure name rules


def normalize_server_name(name: str) -> str:
    """The form names are compared in: lower case, one trailing dot removed.

    Args:
        name: a DNS name from a certificate or from a client's SNI.

    Returns:
        The normalized name (may be empty).
    """
    name = name.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    return name


def name_matches(pattern: str, server_name: str) -> bool:
    """Whether a certificate name serves ``server_name`` (RFC 6125 §6.4.3, simplified).

    A ``*`` is honoured only as the whole leftmost label: ``*.example.com`` matches
    exactly one extra non-empty label (``a.example.com``), not ``a.b.example.com`` and
    not ``example.com``. Any other pattern matches only itself. Both sides are
    normalized first.

    Args:
        pattern: a DNS name from a certificate, maybe a wildcard.
        server_name: the name the client asked for.
    """
    pattern = normalize_server_name(pattern)
    name = normalize_server_name(server_name)
    if not pattern or not name:
        return False
    if pattern.startswith("*."):
        suffix = _wildcard_suffix(name)
        return suffix is not None and suffix == pattern[2:]
    return pattern == name


def _wildcard_suffix(name: str) -> str | None:
    """The part a ``*.`` wildcard must equal for normalized ``name``, or None."""
    first, dot, rest = name.partition(".")
    if not dot or not first or not rest or first == "*":
        return None
    return rest


# ---------------------------------------------------------------------------
# CertKey


@dataclass(frozen=True, slots=True, repr=False)
class _Material:
    """One validated load of a cert-key; replaced whole on reload."""

    chain_pem: bytes  # leaf first, re-serialized from the parsed certificates
    key_pem: bytes  # unencrypted PKCS#8; kept out of repr and messages
    names: tuple[str, ...]
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str


class CertKey:
    """A certificate chain and its private key, loaded from PEM files.

    Construction reads and validates everything: the files are readable, each
    certificate file holds at least one PEM certificate, the key is an unencrypted PEM
    private key that matches the leaf (the first certificate of the first file), and
    OpenSSL accepts the pair under the default security level. A leaf outside its
    validity period is only logged as a WARNING; see :attr:`not_after`.

    Attributes:
        name: the cert-key's name in the command language.
        cert_paths: certificate files, the leaf first, then the chain.
        key_path: the private-key file.
    """

    __slots__ = ("_material", "cert_paths", "key_path", "name")

    def __init__(self, name: str, cert_paths: Sequence[str] | str, key_path: str) -> None:
        """Load and validate the files.

        Args:
            name: the cert-key's name.
            cert_paths: PEM certificate files, leaf first (a single path is accepted).
            key_path: the PEM private-key file.

        Raises:
            CertKeyError: a file is unreadable or not PEM, the key is encrypted or does
                not match the leaf certificate, or OpenSSL rejects the pair.
        """
        if not name:
            raise CertKeyError("cert-key name must not be empty")
        paths = (cert_paths,) if isinstance(cert_paths, str) else tuple(cert_paths)
        if not paths:
            raise CertKeyError(f"cert-key {name}: no certificate file given")
        self.name = name
        self.cert_paths: tuple[str, ...] = paths
        self.key_path = key_path
        self._material = _load(name, paths, key_path)

    def reload(self) -> None:
        """Re-read the files; the new material replaces the old only if fully valid.

        Contexts already built keep serving the old material; build a new
        :class:`TlsServerConfig` (:meth:`TlsServerConfig.rebuild`) to serve the new.

        Raises:
            CertKeyError: as for construction; the cert-key is then unchanged.
        """
        self._material = _load(self.name, self.cert_paths, self.key_path)

    @property
    def names(self) -> tuple[str, ...]:
        """The normalized DNS names the leaf serves: SAN DNS names, else the CN."""
        return self._material.names

    @property
    def subject(self) -> str:
        """The leaf's subject, RFC 4514 form."""
        return self._material.subject

    @property
    def not_before(self) -> dt.datetime:
        """Start of the leaf's validity (UTC, aware)."""
        return self._material.not_before

    @property
    def not_after(self) -> dt.datetime:
        """End of the leaf's validity (UTC, aware)."""
        return self._material.not_after

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf certificate's DER, lower-case hex."""
        return self._material.fingerprint

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        """Whether the leaf is past its ``not_after`` at ``now`` (default: the clock).

        Args:
            now: an aware datetime; injected by tests.
        """
        return (now or dt.datetime.now(dt.UTC)) > self._material.not_after

    def __repr__(self) -> str:
        return (
            f"CertKey({self.name!r}, names={list(self.names)!r}, "
            f"not_after={self.not_after.isoformat()})"
        )

    def _material_snapshot(self) -> _Material:
        return self._material


def _read(name: str, path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CertKeyError(f"cert-key {name}: cannot read {what} file {path}: {reason}") from None


def _load(name: str, cert_paths: tuple[str, ...], key_path: str) -> _Material:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization

    certs: list[x509.Certificate] = []
    for path in cert_paths:
        data = _read(name, path, "certificate")
        try:
            found = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise CertKeyError(f"cert-key {name}: {path} holds no valid PEM certificate") from None
        certs.extend(found)
    leaf = certs[0]

    key_data = _read(name, key_path, "key")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        # cryptography raises TypeError when a password would be needed.
        raise CertKeyError(
            f"cert-key {name}: private key {key_path} is encrypted (not supported)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # from None: the original message may quote parts of the input.
        raise CertKeyError(f"cert-key {name}: {key_path} holds no usable PEM private key") from None

    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise CertKeyError(
            f"cert-key {name}: private key {key_path} does not match the certificate "
            f"in {cert_paths[0]}"
        )

    names = _leaf_names(leaf)
    subject = leaf.subject.rfc4514_string()
    material = _Material(
        chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        names=names,
        subject=subject,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
    )

    # OpenSSL has its own rules (e.g. security level 2 refuses RSA < 2048 bits):
    # find out now, not at the first handshake.
    try:
        _load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), material)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        raise CertKeyError(
            f"cert-key {name}: OpenSSL rejects {cert_paths[0]} with {key_path}: {reason}"
        ) from None

    now = dt.datetime.now(dt.UTC)
    if now > material.not_after:
        _log.warning(
            "cert-key %s: certificate %s (%s) expired at %s",
            name,
            cert_paths[0],
            subject,
            material.not_after.isoformat(),
        )
    elif now < material.not_before:
        _log.warning(
            "cert-key %s: certificate %s (%s) is not valid before %s",
            name,
            cert_paths[0],
            subject,
            material.not_before.isoformat(),
        )
    if not names:
        _log.warning(
            "cert-key %s: certificate %s names no DNS host; it can only be the default",
            name,
            cert_paths[0],
        )
    for child, parent in itertools.pairwise(certs):
        if child.issuer != parent.subject:
            _log.warning(
                "cert-key %s: chain out of order: %s is not issued by %s",
                name,
                child.subject.rfc4514_string(),
                parent.subject.rfc4514_string(),
            )
    return material


def _leaf_names(leaf: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    raw: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        raw = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    if not raw:
        raw = [
            a.value if isinstance(a.value, str) else a.value.decode("ascii", "replace")
            for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    out: list[str] = []
    for n in raw:
        norm = normalize_server_name(n)
        if norm and norm not in out:
            out.append(norm)
    return tuple(out)


@contextlib.contextmanager
def _pem_path(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that holds ``data``, gone when the block ends.

    ``SSLContext.load_cert_chain`` only reads files. Loading the validated bytes
    (rather than the user's paths again) keeps a context exactly what was validated,
    even if the files change meanwhile. On Linux the bytes live in an anonymous
    memory file, so key material never lands in another file on disk.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        try:
            fd = memfd_create("vproxy-cert-key", getattr(os, "MFD_CLOEXEC", 0))
        except OSError:
            pass
        else:
            try:
                os.write(fd, data)
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)
            return
    fd, path = tempfile.mkstemp(prefix="vproxy-ck-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _load_into(ctx: ssl.SSLContext, material: _Material) -> None:
    with _pem_path(material.chain_pem) as chain, _pem_path(material.key_pem) as key:
        ctx.load_cert_chain(chain, key)


# ---------------------------------------------------------------------------
# SNI record: which name each server-side connection asked for

# Keyed by the SSLObject (asyncio, uvloop) or SSLSocket the SNI callback receives,
# which is the object ``transport.get_extra_info("ssl_object")`` returns. Weak keys:
# an entry lives exactly as long as its connection. Module-level so a name recorded
# by one TlsServerConfig is still found after the owner swapped in a rebuilt one.
_sni_names: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
_sni_lock = threading.Lock()  # SNI callbacks run on several worker-loop threads


def sni_server_name(ssl_object: object | None) -> str | None:
    """The server name a client sent in its TLS ClientHello, normalized.

    Call it after the handshake with the listener's
    ``transport.get_extra_info("ssl_object")`` (or ``writer.get_extra_info(...)`` for
    streams). Python's server side offers no getter for SNI, so the context's SNI
    callback records it here.

    Args:
        ssl_object: the connection's ``ssl.SSLObject`` / ``ssl.SSLSocket``, or None.

    Returns:
        The name, or None when the client sent none (or the connection did not go
        through a :class:`TlsServerConfig` context).
    """
    if ssl_object is None:
        return None
    with _sni_lock:
        return _sni_names.get(ssl_object)


# ---------------------------------------------------------------------------
# TlsServerConfig


class TlsServerConfig:
    """The ``ssl.SSLContext`` objects for a TLS-terminating listener.

    One context is built per cert-key, all alike: TLS 1.2 minimum (TLS 1.0/1.1 are
    refused), Python's default server cipher list (``@SECLEVEL=2``, ECDHE/DHE with
    AES-GCM, ChaCha20 or AES; no RSA key exchange, no SHA-1 MACs, no anonymous
    suites) and its default options (no compression, server cipher preference,
    single-use (EC)DH keys), and the ALPN list if any. :attr:`context`, the first
    cert-key's, carries the SNI callback that picks the context for each connection
    (:meth:`select_cert_key`) and records the name for :func:`sni_server_name`.

    Usage::

        transport, proto = await loop.connect_accepted_socket(
            factory, sock, ssl=cfg.context, ssl_handshake_timeout=cfg.handshake_timeout)
        hint = sni_server_name(transport.get_extra_info("ssl_object"))

    Read ``cfg.context`` for each accepted connection rather than once at listen time,
    so a config the owner swaps in after a cert-key reload takes effect at once.

    Attributes:
        cert_keys: the cert-keys, the first being the default.
        alpn: the ALPN protocols offered, in preference order.
        handshake_timeout: seconds allowed for a handshake.
        context: the context to give asyncio.
        contexts: one context per cert-key, same order as :attr:`cert_keys`.
    """

    __slots__ = (
        "_exact",
        "_wildcard",
        "alpn",
        "cert_keys",
        "context",
        "contexts",
        "handshake_timeout",
    )

    def __init__(
        self,
        cert_keys: Sequence[CertKey],
        alpn: Sequence[str] = (),
        handshake_timeout: float = 10.0,
    ) -> None:
        """Build the contexts from the cert-keys' current material.

        Args:
            cert_keys: at least one; the first serves clients whose name matches none.
            alpn: e.g. ``("h2", "http/1.1")`` for L7 modes; empty for plain tcp.
            handshake_timeout: seconds, > 0.

        Raises:
            CertKeyError: no cert-key, a bad ALPN name or timeout, or OpenSSL refuses
                a setting.
        """
        self.cert_keys: tuple[CertKey, ...] = tuple(cert_keys)
        if not self.cert_keys:
            raise CertKeyError("a TLS listener needs at least one cert-key")
        self.alpn: tuple[str, ...] = tuple(alpn)
        for proto in self.alpn:
            if not proto or not proto.isascii() or len(proto) > 255:
                raise CertKeyError(f"invalid ALPN protocol name {proto!r}")
        if not (math.isfinite(handshake_timeout) and handshake_timeout > 0):
            raise CertKeyError(f"handshake timeout must be > 0 seconds: {handshake_timeout}")
        self.handshake_timeout = float(handshake_timeout)

        # Snapshot once: names and contexts come from the same material even if a
        # cert-key reloads while we build.
        materials = [ck._material_snapshot() for ck in self.cert_keys]
        self._exact: dict[str, int] = {}
        self._wildcard: dict[str, int] = {}  # "example.com" for "*.example.com"
        for i, m in enumerate(materials):
            for n in m.names:
                if n.startswith("*."):
                    self._wildcard.setdefault(n[2:], i)
                else:
                    self._exact.setdefault(n, i)

        self.contexts: tuple[ssl.SSLContext, ...] = tuple(
            self._new_context(ck, m) for ck, m in zip(self.cert_keys, materials, strict=True)
        )
        self.context = self.contexts[0]
        self.context.sni_callback = self._on_sni

    def rebuild(self) -> TlsServerConfig:
        """A new config with the same settings and the cert-keys' current material."""
        return TlsServerConfig(self.cert_keys, self.alpn, self.handshake_timeout)

    def select_cert_key(self, server_name: str | None) -> CertKey:
        """The cert-key that serves ``server_name``: exact, then wildcard, then default.

        Args:
            server_name: the client's SNI, or None when it sent none.
        """
        return self.cert_keys[self._select_index(server_name)]

    def _select_index(self, server_name: str | None) -> int:
        if not server_name:
            return 0
        name = normalize_server_name(server_name)
        i = self._exact.get(name)
        if i is not None:
            return i
        suffix = _wildcard_suffix(name)
        if suffix is not None:
            i = self._wildcard.get(suffix)
            if i is not None:
                return i
        return 0

    def _new_context(self, ck: CertKey, material: _Material) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            _load_into(ctx, material)
            if self.alpn:
                ctx.set_alpn_protocols(list(self.alpn))
        except (ssl.SSLError, OSError, NotImplementedError) as exc:
            raise CertKeyError(f"cert-key {ck.name}: cannot build TLS context: {exc}") from None
        return ctx

    def _on_sni(
        self,
        ssl_obj: ssl.SSLSocket | ssl.SSLObject,
        server_name: str | None,
        _ctx: object,
    ) -> int | None:
        # Runs inside OpenSSL's ClientHello processing; an exception here would abort
        # the handshake with nothing but an "unraisable" report, so never raise.
        try:
            i = self._select_index(server_name)
            if i:
                ssl_obj.context = self.contexts[i]
            if server_name:
                with _sni_lock:
                    _sni_names[ssl_obj] = normalize_server_name(server_name)
        except Exception:
            _log.exception("SNI callback failed for server name %r", server_name)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    def __repr__(self) -> str:
        return (
            f"TlsServerConfig(cert_keys={[ck.name for ck in self.cert_keys]!r}, "
            f"alpn={list(self.alpn)!r}, handshake_timeout={self.handshake_timeout})"
        )
