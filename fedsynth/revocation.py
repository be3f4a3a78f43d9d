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
``PKI/revoked.crl`` (written atomically by rename) and gives the new CRL the next *CRL
number* (RFC 5280 §5.2.3). :class:`RevocationList` re-reads the file whenever its inode,
size or modification time changes, so a revocation takes effect on the next call.

Un-revoking a key must not be possible by touching the file:

* a CRL that exists but cannot be parsed, or whose signature does not verify against the
  CA, fails *closed*: every call is refused until it is fixed;
* a CRL that is **missing**, or **older** than the last one accepted (a lower CRL number;
  without numbers, an earlier ``thisUpdate``), or that differs from it under the same
  number and date, is refused loudly (an error in the log, and ``on_refuse`` for the
  audit log) and the **last good CRL stays in force**. The coordinator keeps that last good
  CRL in its state store (``last_good`` / ``on_accept``), so the rule holds across
  restarts too: deleting ``revoked.crl`` or copying an older, validly signed one back while
  the coordinator is down re-enables nothing.

The serial is read from ``auth_context()["x509_pem_cert"]``, the certificate the TLS layer
verified, never from a message field.
"""

from __future__ import annotations

import datetime as _dt
import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from fedsynth.errors import FedsynthError, InputError
from fedsynth.fileio import PUBLIC_FILE_MODE, atomic_write
from fedsynth.timeutil import utcnow

__all__ = [
    "CRL_FILENAME",
    "CrlInfo",
    "RevocationError",
    "RevocationList",
    "RevokedCertificate",
    "crl_info",
    "load_revoked_serials",
    "peer_certificate",
    "peer_common_name",
    "revoke_certificate",
    "RevocationInterceptor",
]

log = logging.getLogger(__name__)

#: File name of the CRL inside the PKI directory.
CRL_FILENAME = "revoked.crl"


class RevocationError(FedsynthError):
    """The revocation list exists but cannot be trusted (unreadable, bad signature)."""


def _load_crl(path: Path) -> Any:
    return _parse_crl(path.read_bytes(), repr(str(path)))


def _load_ca(ca: str | Path):
    try:
        return x509.load_pem_x509_certificate(Path(ca).read_bytes())
    except (OSError, ValueError) as error:
        raise InputError(f"CA certificate {str(ca)!r} cannot be read: {error}") from None


@dataclass(frozen=True)
class CrlInfo:
    """A CRL read and verified: what ordering and the revocation check need.

    Attributes
    ----------
    der
        The CRL in DER (what the coordinator keeps as its last good CRL).
    number
        Its CRL number extension (RFC 5280 §5.2.3), or None when it has none.
    this_update
        Its ``thisUpdate`` (UTC).
    serials
        The revoked serial numbers.
    """

    der: bytes
    number: int | None
    this_update: _dt.datetime
    serials: frozenset[int]

    def describe(self) -> str:
        """One line naming this CRL (number, thisUpdate, revoked count) for logs and refusals."""
        number = f"CRL number {self.number}" if self.number is not None else "no CRL number"
        return (f"{number}, thisUpdate {self.this_update:%Y-%m-%dT%H:%M:%SZ}, "
                f"{len(self.serials)} revoked")

    def refuses(self, candidate: CrlInfo) -> str | None:
        """Why ``candidate`` may not replace this CRL (None when it may).

        A CRL is newer by its CRL number when both carry one (and its ``thisUpdate`` must
        not go back), by ``thisUpdate`` otherwise; an identical CRL is accepted; a different
        CRL under the same number and date is refused too (a CA issues one CRL per number).
        """
        if candidate.der == self.der:
            return None
        if self.number is not None and candidate.number is not None:
            if candidate.number < self.number:
                return (f"it is older (CRL number {candidate.number}) than the CRL in force "
                        f"(CRL number {self.number})")
            if candidate.number == self.number:
                return (f"it differs from the CRL in force under the same CRL number "
                        f"{self.number}")
            if candidate.this_update < self.this_update:
                return (f"its thisUpdate {candidate.this_update:%Y-%m-%dT%H:%M:%SZ} is "
                        f"earlier than the CRL in force's "
                        f"{self.this_update:%Y-%m-%dT%H:%M:%SZ}")
            return None
        if candidate.this_update < self.this_update:
            return (f"it is older (thisUpdate {candidate.this_update:%Y-%m-%dT%H:%M:%SZ}) "
                    f"than the CRL in force ({self.this_update:%Y-%m-%dT%H:%M:%SZ})")
        if candidate.this_update == self.this_update:
            return ("it differs from the CRL in force but carries the same thisUpdate and "
                    "no higher CRL number")
        return None


def _parse_crl(data: bytes, where: str) -> Any:
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as error:
        raise InputError(f"revocation list {where} is not a valid X.509 CRL: "
                         f"{error}") from None


def crl_info(data: bytes, ca: str | Path | None = None, *, where: str = "") -> CrlInfo:
    """Parse (and with ``ca`` verify) a CRL given as PEM or DER bytes.

    Raises
    ------
    InputError
        Not a CRL, or (with ``ca``) not issued and signed by that CA.
    """
    crl = _parse_crl(data, where or "(bytes)")
    if ca is not None:
        ca_cert = _load_ca(ca)
        if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):
            raise InputError(f"revocation list {where or '(bytes)'} is not signed by the CA "
                             f"{str(ca)!r}")
    try:
        number: int | None = crl.extensions.get_extension_for_class(
            x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return CrlInfo(crl.public_bytes(serialization.Encoding.DER), number, crl.last_update_utc,
                   frozenset(entry.serial_number for entry in crl))


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
    return crl_info(path.read_bytes(), ca, where=repr(str(path))).serials


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
    if not isinstance(ca_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey,
                               ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise InputError(f"CA key {str(ca_key_path)!r} is a {type(ca_key).__name__}, which "
                         "cannot sign a CRL")
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
    number = 0
    if crl_path.exists():
        old = _load_crl(crl_path)
        if old.issuer != ca_cert.subject or not old.is_signature_valid(ca_cert.public_key()):
            raise InputError(f"{str(crl_path)!r} is not signed by this CA; refusing to extend "
                             "it")
        existing = list(old)
        try:
            number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            number = 0
    if any(entry.serial_number == serial for entry in existing):
        return RevokedCertificate(serial, subject, crl_path, True, len(existing))
    now = now or utcnow()
    # The CRL number grows with every CRL, so a coordinator can refuse an older one put
    # back in its place (RFC 5280 §5.2.3 makes it mandatory for conforming CAs).
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now)
               .next_update(now + _dt.timedelta(days=365))
               .add_extension(x509.CRLNumber(number + 1), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_cert.public_key()), critical=False))
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
    atomic_write(crl_path, crl.public_bytes(serialization.Encoding.PEM), mode=PUBLIC_FILE_MODE)
    return RevokedCertificate(serial, subject, crl_path, False, len(existing) + 1)


class RevocationList:
    """The revoked serials of a CRL file, re-read whenever the file changes.

    Parameters
    ----------
    path
        The CRL (usually ``PKI/revoked.crl``); it may not exist yet.
    ca
        CA certificate used to verify the CRL's signature (recommended).
    last_good
        The last CRL accepted before (PEM or DER), as kept by the caller across restarts:
        a CRL older than it, or a missing file, is refused and it stays in force. Ignored
        (with an error in the log) when it does not verify against ``ca``.
    on_accept
        Called with the DER of every newly accepted CRL (the coordinator stores it).
    on_refuse
        Called with the reason whenever a missing or older CRL is refused (the coordinator
        audits it); exceptions are logged, not propagated.

    Notes
    -----
    :meth:`is_revoked` costs one ``stat`` per call; it is thread-safe.
    """

    def __init__(self, path: str | Path, ca: str | Path | None = None, *,
                 last_good: bytes | None = None,
                 on_accept: Callable[[bytes], None] | None = None,
                 on_refuse: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.ca = Path(ca) if ca is not None else None
        self._on_accept = on_accept
        self._on_refuse = on_refuse
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._trusted: CrlInfo | None = None
        self._serials: frozenset[int] = frozenset()
        self._error: str | None = None
        self._refused: str | None = None
        if last_good:
            try:
                self._trusted = crl_info(last_good, self.ca, where="kept as the last good one")
            except InputError as error:
                log.error("the last good revocation list kept by the coordinator is not "
                          "usable and is ignored: %s", error)
            else:
                self._serials = self._trusted.serials
        self._initial = True
        self._refresh()
        self._initial = False
        if self._trusted is None and self._error is None and not self.path.exists():
            log.warning("no revocation list at %s: no certificate is revoked yet ('fedsynth "
                        "ca revoke' creates it)", self.path)

    @property
    def trusted(self) -> CrlInfo | None:
        """The CRL in force (the last one accepted), or None."""
        return self._trusted

    @property
    def refused(self) -> str | None:
        """Why the file's current content is refused (the last good CRL is in force)."""
        return self._refused

    def _refuse(self, reason: str) -> None:
        """Record (once per file change) that the file is refused; caller holds the lock."""
        if reason == self._refused:
            return
        self._refused = reason
        log.error("revocation list %s REFUSED: %s; the last good list stays in force (%s)",
                  self.path, reason, self._trusted.describe() if self._trusted else "none")
        if self._on_refuse is not None:
            try:
                self._on_refuse(reason)
            except Exception:  # noqa: BLE001 - auditing must not stop the check
                log.exception("revocation on_refuse callback failed")

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp == self._stamp and not self._initial:
                return
            self._stamp = stamp
            if stamp is None:
                self._error = None
                if self._trusted is not None:
                    self._refuse(f"the file is missing, though a CRL "
                                 f"({self._trusted.describe()}) was in force")
                return
            try:
                candidate = crl_info(self.path.read_bytes(), self.ca,
                                     where=repr(str(self.path)))
            except (InputError, OSError) as error:
                if self._error is None:
                    log.error("revocation list %s cannot be trusted, refusing every call: %s",
                              self.path, error)
                self._error = str(error)
                return
            self._error = None
            if self._trusted is not None:
                why = self._trusted.refuses(candidate)
                if why is not None:
                    self._refuse(why)
                    return
            changed = self._trusted is None or candidate.der != self._trusted.der
            self._refused = None
            if candidate.serials != self._serials:
                log.warning("revocation list %s reloaded: %d revoked certificate(s) (%s)",
                            self.path, len(candidate.serials), candidate.describe())
            self._trusted, self._serials = candidate, candidate.serials
            if changed and self._on_accept is not None:
                try:
                    self._on_accept(candidate.der)
                except Exception:  # noqa: BLE001 - kept in memory; logged
                    log.exception("the accepted revocation list could not be kept")

    @property
    def serials(self) -> frozenset[int]:
        """The revoked serials in force (reloads first if the file changed)."""
        self._refresh()
        return self._serials

    def is_revoked(self, serial: int) -> bool:
        """True when ``serial`` is revoked by the CRL in force.

        Raises
        ------
        RevocationError
            The CRL file exists but cannot be trusted (fail closed).
        """
        self._refresh()
        if self._error is not None:
            raise RevocationError(f"revocation list unusable: {self._error}")
        return serial in self._serials


@functools.lru_cache(maxsize=4096)
def _certificate_from_pem(pem: bytes) -> Any:
    """Parse a peer certificate once.

    Parse a peer certificate once: every call of a connection presents the same PEM, and
    under a flood parsing it for each of the interceptors was a measurable cost.
    """
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def peer_certificate(context: Any) -> Any:
    """The verified TLS peer certificate of a gRPC call, or None (insecure transport).

    Works with both ``grpc.ServicerContext`` and ``grpc.aio.ServicerContext``.
    """
    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - some test contexts lack an auth context
        return None
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    pem = pems[0]
    return _certificate_from_pem(pem if isinstance(pem, bytes) else pem.encode())


def peer_common_name(context: Any) -> str | None:
    """The common name of the verified TLS peer certificate, or None."""
    cert = peer_certificate(context)
    return _site_of(cert) if cert is not None else None


def wrap_method_handler(handler: Any, enter: Callable[[Any], Any],
                        leave: Callable[[Any], None] | None = None) -> Any:
    """A method handler that admits each call before it runs and releases it after.

    A copy of a grpc.aio method handler that awaits ``enter(context)`` first (which
    aborts a refused call) and, when given, calls ``leave(ticket)`` with what ``enter``
    returned once the call ends, however it ends (reply, error, cancellation by the client's
    deadline). The revocation check needs only ``enter``; the coordinator's admission
    interceptor (calls in flight per identity) uses both.
    """
    if handler is None:
        return None
    kinds = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            ticket = await enter(context)
            try:
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                _release(leave, ticket)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **kinds)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> Any:
            ticket = await enter(context)
            try:
                result = inner_us(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):
                    await result
                else:
                    for item in result:
                        yield item
            finally:
                _release(leave, ticket)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **kinds)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: Any, context: Any) -> Any:
            ticket = await enter(context)
            try:
                result = inner_su(request_iterator, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                _release(leave, ticket)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **kinds)
    inner_ss = handler.stream_stream

    async def stream_stream(request_iterator: Any, context: Any) -> Any:
        ticket = await enter(context)
        try:
            result = inner_ss(request_iterator, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            elif inspect.isawaitable(result):
                await result
        finally:
            _release(leave, ticket)

    return grpc.stream_stream_rpc_method_handler(stream_stream, **kinds)


def _release(leave: Callable[[Any], None] | None, ticket: Any) -> None:
    if leave is not None:
        leave(ticket)


@functools.lru_cache(maxsize=4096)
def _site_of(cert: Any) -> str:
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
        """Wrap each call's handler so that a revoked peer is refused (exempt methods pass)."""
        handler = await continuation(handler_call_details)
        if handler_call_details.method in self._exempt:
            return handler
        return wrap_method_handler(handler, self._check)
