"""The project's certificate authority: CA, coordinator and site certificates.

Why
---
Every connection of the federation is mutual TLS (docs/architecture.md, security model). A site's
identity *is* its certificate: its name is in the certificate's common name and in a DNS
subject alternative name, and the coordinator reads it from the verified TLS peer
certificate, never from a message. The same private key signs the site's submissions
(:mod:`fedsynth.signing`), so a stored submission can be attributed to the site long after
the TLS session is gone.

Keys are ECDSA on P-256 (NIST SP 800-186; RFC 5480 for its use in X.509): small, fast,
and supported by gRPC's BoringSSL and by :mod:`cryptography`. Private keys are written with
mode 0600 and nothing is overwritten unless ``force`` is given, because overwriting a CA key
silently invalidates every certificate already handed to the sites.

File names (docs/architecture.md): ``PKI/ca.crt``, ``PKI/ca.key``, ``PKI/coordinator.crt/.key``,
``PKI/NAME.crt/.key``.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsynth.errors import InputError
from fedsynth.fileio import atomic_write
from fedsynth.timeutil import utcnow

__all__ = ["IssuedCertificate", "init_ca", "issue_site", "issue_coordinator",
           "validate_site_name", "certificate_common_name", "SITE_NAME_PATTERN"]

#: Site names: lower-case letters, digits, '-', '_' and '.', starting with a letter or digit,
#: at most 63 characters (a DNS label, so it fits a DNS SAN; also a safe file name).
SITE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

#: Validity of issued certificates. Long on purpose for a research network; revocation
#: (``fedsynth ca revoke``) handles a leaked key.
CA_DAYS = 3650
LEAF_DAYS = 825


@dataclass(frozen=True)
class IssuedCertificate:
    """Where :func:`init_ca` / :func:`issue_site` / :func:`issue_coordinator` wrote.

    Attributes
    ----------
    name
        Common name of the certificate.
    cert
        Path of the PEM certificate.
    key
        Path of the PEM private key (mode 0600).
    serial
        Serial number (what ``fedsynth ca revoke`` records).
    """

    name: str
    cert: Path
    key: Path
    serial: int


def validate_site_name(name: str) -> str:
    """Return ``name`` if it is a valid site name, else raise :class:`InputError`."""
    if not isinstance(name, str) or not SITE_NAME_PATTERN.match(name):
        raise InputError(f"site name {name!r} is invalid: use 1-63 lower-case letters, digits, "
                         "'.', '-' or '_', starting with a letter or digit")
    if name in ("ca", "coordinator"):
        raise InputError(f"site name {name!r} is reserved (it would overwrite the "
                         f"{name} files of the PKI)")
    return name


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _check_free(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise InputError(f"{existing[0]} already exists; refusing to overwrite it "
                         "(pass --force to replace it)")


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key that is never readable by others, not even briefly.

    Write a private key: created 0600 from the start (never world-readable, not even
    briefly), then renamed into place.
    """
    atomic_write(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    atomic_write(path, data, mode=0o644)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_ca(pki: Path):
    cert_path, key_path = pki / "ca.crt", pki / "ca.key"
    for path in (cert_path, key_path):
        if not path.exists():
            raise InputError(f"{path} does not exist: run 'fedsynth ca init --dir {pki}' first")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as error:
        raise InputError(f"cannot read the CA in {pki}: {error}") from None
    return cert, key


def init_ca(pki_dir: str | Path, *, name: str = "fedsynth project CA",
            force: bool = False) -> IssuedCertificate:
    """Create the project CA: ``ca.crt`` and ``ca.key`` (0600) in ``pki_dir``.

    Raises :class:`InputError` when the files exist and ``force`` is false.
    """
    pki = Path(pki_dir)
    pki.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = pki / "ca.crt", pki / "ca.key"
    _check_free([cert_path, key_path], force)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, _cert_pem(cert))
    return IssuedCertificate(name, cert_path, key_path, cert.serial_number)


def _issue(pki: Path, stem: str, common_name: str, sans: list, *, server: bool,
           force: bool) -> IssuedCertificate:
    cert_path, key_path = pki / f"{stem}.crt", pki / f"{stem}.key"
    _check_free([cert_path, key_path], force)
    ca_cert, ca_key = _load_ca(pki)
    key = _new_key()
    now = utcnow()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=True, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, _cert_pem(cert))
    return IssuedCertificate(common_name, cert_path, key_path, cert.serial_number)


def issue_site(pki_dir: str | Path, site: str, *, force: bool = False) -> IssuedCertificate:
    """Issue a site's client certificate ``NAME.crt``/``NAME.key``: CN and DNS SAN = name."""
    validate_site_name(site)
    return _issue(Path(pki_dir), site, site, [x509.DNSName(site)], server=False, force=force)


def issue_coordinator(pki_dir: str | Path, host: str, *,
                      force: bool = False) -> IssuedCertificate:
    """Issue the coordinator's server certificate with SANs ``host``, localhost, 127.0.0.1.

    ``host`` may be a DNS name or an IP address.
    """
    if not isinstance(host, str) or not host or any(c.isspace() for c in host) or "/" in host:
        raise InputError(f"--coordinator host {host!r} is not a host name or IP address")
    sans: list = []
    seen: set[str] = set()
    for entry in (host, "localhost", "127.0.0.1"):
        if entry in seen:
            continue
        seen.add(entry)
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            sans.append(x509.DNSName(entry))
    return _issue(Path(pki_dir), "coordinator", host, sans, server=True, force=force)


def certificate_common_name(pem: bytes) -> str:
    """Common name of a PEM certificate (the site identity)."""
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise InputError("certificate has no common name")
    return str(names[0].value)
