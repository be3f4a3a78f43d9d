"""Sign and verify a submission's bytes with the site's key.

Why
---
TLS authenticates the connection, but a stored submission outlives it: the coordinator keeps
the exact bytes each site signed and the signature, so anyone holding the CA certificate can
later check that a pooled number came from that site and was not altered in the store
(non-repudiation; cf. the signed-update design of secure aggregation systems, Bonawitz et al.,
CCS 2017). The signing key is the key of the site's TLS certificate (one key per site to
protect, one revocation to make).

The signed bytes are the serialized ``fedsynth.v1.Submission`` exactly as sent; the
coordinator verifies those bytes before parsing them, so no canonicalisation of protobuf
encoding is needed. ECDSA P-256 with SHA-256 (FIPS 186-5) or Ed25519 (RFC 8032) keys are
supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedsynth.errors import FedsynthError, InputError

__all__ = ["SignatureError", "load_private_key", "load_certificate", "sign", "verify"]


class SignatureError(FedsynthError):
    """A signature does not verify against the certificate's public key."""


def load_private_key(path: str | Path) -> Any:
    """Load a PEM private key (unencrypted) from ``path``."""
    path = Path(path)
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise InputError(f"private key {path} does not exist") from None
    except (ValueError, TypeError) as error:
        raise InputError(f"private key {path} cannot be read: {error}") from None


def load_certificate(pem: bytes | str | Path) -> Any:
    """Load a PEM certificate from bytes or a path."""
    if isinstance(pem, Path):
        pem = pem.read_bytes()
    if isinstance(pem, str):
        pem = pem.encode()
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise InputError(f"certificate cannot be read: {error}") from None


def sign(private_key: Any, data: bytes) -> bytes:
    """Signature of ``data``: DER ECDSA-SHA256 for EC keys, raw Ed25519 otherwise."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    raise InputError(f"unsupported signing key type {type(private_key).__name__}: use an "
                     "ECDSA P-256 or Ed25519 key (as issued by 'fedsynth ca issue')")


def verify(certificate: Any, data: bytes, signature: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is the certificate key's on ``data``."""
    public = certificate.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
        else:
            raise SignatureError(f"unsupported certificate key type {type(public).__name__}")
    except InvalidSignature:
        raise SignatureError("the submission's signature does not verify against the site's "
                             "certificate") from None
