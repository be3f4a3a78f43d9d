"""Certificate revocation: shut a site whose key leaked out at once, without a restart.

Why
---
Mutual TLS proves that a peer holds a key the project CA certified; it cannot know that the
key has since leaked. The CA therefore publishes a *certificate revocation list* (an X.509
v2 CRL, RFC 5280 §5, signed by the CA key) and the coordinator checks the serial number of
the TLS peer's certificate against it on **every call**, not only at connection set-up: a
gRPC channel stays open for hours, so a handshake-time check would let a revoked site keep
submitting on its existing connection.

``fedsynth ca revoke --dir PKI --site NAME`` adds the serial of ``PKI/NAME.crt`` to
``PKI/revoked.crl`` (written atomically by rename). :class:`RevocationList` re-reads the
file whenever its inode, size or modification time changes, so a revocation takes effect
on the next call. The list fails *closed*: if the file exists but cannot be parsed, or its
signature does not verify against the CA, every call is refused until it is fixed
(an attacker who could corrupt the file must not thereby un-revoke a key).

The serial is read from ``auth_context()["x509_pem_cert"]``, the certificate the TLS layer
verified, never from a message field.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedsynth.errors import FedsynthError, InputError
from fedsynth.fileio import atomic_write
from fedsynth.timeutil import utcnow

__all__ = [
    "CRL_FILENAME",
    "RevocationError",
    "RevocationList",
    "RevokedCertificate",
    "load_revoked_serials",
    "peer_certificate",
    "revoke_certificate",
    "RevocationInterceptor",
]

log = logging.getLogger(__name__)

#: File name of the CRL inside the PKI directory.
CRL_FILENAME = "revoked.crl"


class RevocationError(FedsynthError):
    """The revocation list exists but cannot be trusted (unreadable, bad signature)."""


def _load_crl(path: Path):
    from cryptography import x509

    data = path.read_bytes()
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as error:
        raise InputError(f"revocation list {str(path)!r} is not a valid X.509 CRL: "
                         f"{error}") from None


def _load_ca(ca: str | Path):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(Path(ca).read_bytes())
    except (OSError, ValueError) as error:
        raise InputError(f"CA certificate {str(ca)!r} cannot be read: {error}") from None


def load_revoked_serials(path: str | Path, ca: str | Path | None = None) -> frozenset[int]:
    """Serial numbers listed in a CRL file.

    Parameters
    ----------
    path
        PEM or DER CRL. A missing file means "nothing revoked yet" (empty set).
    ca
        The CA certificate; when given, the CRL's issuer and signature must match it.

    Raises
    ------
    InputError
        The file is not a CRL, or (with ``ca``) was not signed by that CA.
    """
    path = Path(path)
    if not path.exists():
        return frozenset()
    crl = _load_crl(path)
    if ca is not None:
        ca_cert = _load_ca(ca)
        if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):
            raise InputError(f"revocation list {str(path)!r} is not signed by the CA "
                             f"{str(ca)!r}")
    return frozenset(entry.serial_number for entry in crl)


@dataclass(frozen=True)
class RevokedCertificate:
    """Outcome of :func:`revoke_certificate`."""

    serial: int
    subject: str
    crl: Path
    already_revoked: bool
    revoked_count: int


def revoke_certificate(pki_dir: str | Path, *, site: str | None = None,
                       serial: int | None = None, reason: str = "key_compromise",
                       now: _dt.datetime | None = None) -> RevokedCertificate:
    """Add a site's certificate (or a serial) to ``PKI/revoked.crl``, signed by the CA key.

    Idempotent: revoking a serial already listed rewrites nothing.

    Parameters
    ----------
    pki_dir
        Directory holding ``ca.crt`` and ``ca.key`` (``fedsynth ca init``).
    site
        Site name; its certificate ``PKI/<site>.crt`` gives the serial.
    serial
        Serial to revoke when the certificate file is gone.
    reason
        RFC 5280 reason (``key_compromise``, ``superseded``, ``cessation_of_operation``,
        ``unspecified``, ...).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

    pki = Path(pki_dir)
    if (site is None) == (serial is None):
        raise InputError("give exactly one of --site NAME or --serial HEX")
    try:
        reason_flag = x509.ReasonFlags[reason]
    except KeyError:
        raise InputError(f"--reason: unknown revocation reason {reason!r} (one of "
                         f"{', '.join(r.name for r in x509.ReasonFlags)})") from None
    ca_crt, ca_key_path = pki / "ca.crt", pki / "ca.key"
    for required in (ca_crt, ca_key_path):
        if not required.exists():
            raise InputError(f"--dir: {str(required)!r} does not exist (run 'fedsynth ca init "
                             f"--dir {pki}' first)")
    ca_cert = _load_ca(ca_crt)
    try:
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise InputError(f"CA key {str(ca_key_path)!r} cannot be read: {error}") from None
    subject = f"serial {serial:x}" if serial is not None else ""
    if site is not None:
        if not site or "/" in site or site.startswith("."):
            raise InputError(f"--site: invalid site name {site!r}")
        cert_path = pki / f"{site}.crt"
        if not cert_path.exists():
            raise InputError(f"--site: no certificate {str(cert_path)!r} for site {site!r} "
                             "(use --serial to revoke by serial number)")
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.issuer != ca_cert.subject:
            raise InputError(f"--site: {str(cert_path)!r} was not issued by this CA")
        serial = cert.serial_number
        subject = cert.subject.rfc4514_string()
    assert serial is not None
    if serial <= 0:
        raise InputError(f"--serial: must be positive, got {serial}")
    crl_path = pki / CRL_FILENAME
    existing = []
    if crl_path.exists():
        old = _load_crl(crl_path)
        if old.issuer != ca_cert.subject or not old.is_signature_valid(ca_cert.public_key()):
            raise InputError(f"{str(crl_path)!r} is not signed by this CA; refusing to extend "
                             "it")
        existing = list(old)
    if any(entry.serial_number == serial for entry in existing):
        return RevokedCertificate(serial, subject, crl_path, True, len(existing))
    now = now or utcnow()
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now)
               .next_update(now + _dt.timedelta(days=365)))
    for entry in existing:
        builder = builder.add_revoked_certificate(entry)
    new_entry = (x509.RevokedCertificateBuilder().serial_number(serial)
                 .revocation_date(now)
                 .add_extension(x509.CRLReason(reason_flag), critical=False)
                 .build())
    builder = builder.add_revoked_certificate(new_entry)
    algorithm = None if isinstance(ca_key, (ed25519.Ed25519PrivateKey,
                                            ed448.Ed448PrivateKey)) else hashes.SHA256()
    crl = builder.sign(private_key=ca_key, algorithm=algorithm)
    atomic_write(crl_path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return RevokedCertificate(serial, subject, crl_path, False, len(existing) + 1)


class RevocationList:
    """The revoked serials of a CRL file, re-read whenever the file changes.

    Parameters
    ----------
    path
        The CRL (usually ``PKI/revoked.crl``); it may not exist yet.
    ca
        CA certificate used to verify the CRL's signature (recommended).

    Notes
    -----
    :meth:`is_revoked` costs one ``stat`` per call; it is thread-safe.
    """

    def __init__(self, path: str | Path, ca: str | Path | None = None) -> None:
        self.path = Path(path)
        self.ca = Path(ca) if ca is not None else None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._error: str | None = None
        self._refresh()

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp == self._stamp and (stamp is not None or self._error is None):
                return
            if stamp is None:
                self._serials, self._error, self._stamp = frozenset(), None, None
                return
            try:
                serials = load_revoked_serials(self.path, self.ca)
            except (InputError, OSError) as error:
                if self._error is None:
                    log.error("revocation list %s cannot be trusted, refusing every call: %s",
                              self.path, error)
                self._error = str(error)
            else:
                if serials != self._serials:
                    log.warning("revocation list %s reloaded: %d revoked certificate(s)",
                                self.path, len(serials))
                self._serials, self._error = serials, None
            self._stamp = stamp

    @property
    def serials(self) -> frozenset[int]:
        """The revoked serials as of the last reload (reloads first if the file changed)."""
        self._refresh()
        return self._serials

    def is_revoked(self, serial: int) -> bool:
        """True when ``serial`` is revoked.

        Raises
        ------
        RevocationError
            The CRL exists but cannot be trusted (fail closed).
        """
        self._refresh()
        if self._error is not None:
            raise RevocationError(f"revocation list unusable: {self._error}")
        return serial in self._serials


def peer_certificate(context: Any):
    """The verified TLS peer certificate of a gRPC call, or None (insecure transport).

    Works with both ``grpc.ServicerContext`` and ``grpc.aio.ServicerContext``.
    """
    from cryptography import x509

    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - some test contexts lack an auth context
        return None
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    pem = pems[0]
    try:
        return x509.load_pem_x509_certificate(pem if isinstance(pem, bytes) else pem.encode())
    except ValueError:
        return None


def _wrap_handler(handler, check: Callable[[Any], Any]):
    """Return a copy of a grpc.aio method handler that awaits ``check(context)`` first."""
    import inspect

    if handler is None:
        return None
    kinds = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            await check(context)
            result = inner(request, context)
            return await result if inspect.isawaitable(result) else result

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kinds)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request, context):
            await check(context)
            result = inner_us(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            elif inspect.isawaitable(result):
                await result
            else:
                for item in result:
                    yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kinds)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator, context):
            await check(context)
            result = inner_su(request_iterator, context)
            return await result if inspect.isawaitable(result) else result

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kinds)
    inner_ss = handler.stream_stream

    async def stream_stream(request_iterator, context):
        await check(context)
        result = inner_ss(request_iterator, context)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        elif inspect.isawaitable(result):
            await result

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kinds)


def _site_of(cert) -> str:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "?"


class RevocationInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio server interceptor refusing every call from a revoked certificate.

    Parameters
    ----------
    revocations
        The :class:`RevocationList` to consult on every call.
    on_reject
        Optional callback ``(site, serial, reason)`` (e.g. to write the coordinator's audit
        log); exceptions it raises are logged, not propagated.
    exempt
        Full method names that skip the check. Empty by default, and the coordinator
        exempts nothing: every service on its server, the standard health service
        included, answers a revoked certificate with ``PERMISSION_DENIED`` (a health probe
        answering ``SERVING`` to a revoked key would tell its holder the coordinator is
        there and reachable, and would be the one method left open to it).
    report_every
        ``on_reject`` is called at most once per certificate serial in this many seconds,
        so that a revoked peer hammering the coordinator cannot flood its audit log.

    Calls from a revoked certificate end with ``PERMISSION_DENIED`` naming the serial; when
    the CRL cannot be trusted, every call ends with ``UNAVAILABLE``.
    """

    def __init__(self, revocations: RevocationList,
                 on_reject: Callable[[str, int, str], None] | None = None,
                 exempt: tuple[str, ...] = (), *,
                 report_every: float = 60.0,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self._revocations = revocations
        self._on_reject = on_reject
        self._exempt = exempt
        self._report_every = report_every
        self._clock = clock or time.monotonic
        self._last_report: dict[int, float] = {}

    async def _check(self, context) -> None:
        cert = peer_certificate(context)
        if cert is None:
            return  # insecure transport (explicit --insecure); nothing to check
        try:
            revoked = self._revocations.is_revoked(cert.serial_number)
        except RevocationError as error:
            self._report(_site_of(cert), cert.serial_number, str(error))
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"coordinator cannot check revocations: {error}")
            return
        if revoked:
            reason = (f"certificate serial {cert.serial_number:x} of {_site_of(cert)!r} is "
                      "revoked")
            self._report(_site_of(cert), cert.serial_number, reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)

    def _report(self, site: str, serial: int, reason: str) -> None:
        if self._on_reject is None:
            return
        now = self._clock()
        last = self._last_report.get(serial)
        if last is not None and now - last < self._report_every:
            return
        if len(self._last_report) > 10_000:
            self._last_report.clear()
        self._last_report[serial] = now
        try:
            self._on_reject(site, serial, reason)
        except Exception:  # noqa: BLE001 - auditing must not crash the server
            log.exception("revocation on_reject callback failed")

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler_call_details.method in self._exempt:
            return handler
        return _wrap_handler(handler, self._check)
