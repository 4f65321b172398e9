"""Throwaway test PKI: a root CA, an intermediate CA and leaf certificates as PEM files.

Built with ``cryptography`` into a directory the test owns (``tmp_path``); nothing here
is vproxy code. Leaves are signed by the intermediate, so a client that trusts only the
root verifies a leaf only if the server sends the chain (``Leaf.chain``). EC P-256
keys keep generation fast; RSA is available for key-size tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_DAY = dt.timedelta(days=1)


def new_key(rsa_bits: int | None = None) -> PrivateKey:
    """A fresh EC P-256 key, or RSA of ``rsa_bits`` bits."""
    if rsa_bits:
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    """PEM (PKCS#8) of ``key``, encrypted when ``password`` is given."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER, lower-case hex (the form ``CertKey.fingerprint`` uses)."""
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass
class Leaf:
    """Files of one issued leaf certificate.

    Attributes:
        cert: the leaf alone.
        key: its unencrypted private key.
        chain: ``[cert, intermediate]`` as strings, ready for ``CertKey(cert_paths=...)``.
        fingerprint: SHA-256 of the leaf's DER, hex.
        certificate: the parsed leaf.
    """

    cert: Path
    key: Path
    chain: list[str]
    fingerprint: str
    certificate: x509.Certificate


class CertAuthority:
    """A root and an intermediate CA writing into ``directory``.

    ``root_path`` is the trust anchor for clients (``cafile``); ``intermediate_path``
    is the chain file that follows every leaf.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        self.root_key = new_key()
        root_name = _name("vproxy test root CA")
        self.root = _ca_builder(root_name, root_name, self.root_key, now, path_len=1).sign(
            self.root_key, hashes.SHA256()
        )
        self.intermediate_key = new_key()
        self.intermediate = (
            _ca_builder(
                _name("vproxy test intermediate CA"), root_name, self.intermediate_key, now, 0
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()),
                critical=False,
            )
            .sign(self.root_key, hashes.SHA256())
        )
        self.root_path = self.write("root-ca.pem", cert_pem(self.root))
        self.intermediate_path = self.write("intermediate-ca.pem", cert_pem(self.intermediate))

    def write(self, filename: str, data: bytes) -> Path:
        path = self.dir / filename
        path.write_bytes(data)
        return path

    def issue(
        self,
        stem: str,
        dns_names: Sequence[str] = (),
        *,
        cn: str | None = None,
        expired: bool = False,
        key: PrivateKey | None = None,
        rsa_bits: int | None = None,
    ) -> Leaf:
        """Issue a server leaf and write ``<stem>.pem`` / ``<stem>.key``.

        Args:
            stem: file name stem.
            dns_names: SAN DNS names; none means no SAN extension at all.
            cn: subject CN (default: the first DNS name, or ``stem``).
            expired: valid only in the past (ended yesterday).
            key: the leaf key (default: a new one).
            rsa_bits: make the new key RSA of this size.
        """
        key = key or new_key(rsa_bits)
        now = dt.datetime.now(dt.UTC)
        if expired:
            not_before, not_after = now - 30 * _DAY, now - _DAY
        else:
            not_before, not_after = now - _DAY, now + 30 * _DAY
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn or (dns_names[0] if dns_names else stem)))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.intermediate_key.public_key()
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if dns_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
                critical=False,
            )
        cert = builder.sign(self.intermediate_key, hashes.SHA256())
        cert_path = self.write(f"{stem}.pem", cert_pem(cert))
        key_path = self.write(f"{stem}.key", key_pem(key))
        return Leaf(
            cert=cert_path,
            key=key_path,
            chain=[str(cert_path), str(self.intermediate_path)],
            fingerprint=fingerprint(cert),
            certificate=cert,
        )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vproxy tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca_builder(
    subject: x509.Name, issuer: x509.Name, key: PrivateKey, now: dt.datetime, path_len: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 365 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
