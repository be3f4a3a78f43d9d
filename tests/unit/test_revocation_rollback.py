"""A missing or older CRL cannot re-enable a revoked certificate (issue 10, item 7).

``revoked.crl`` is a plain file next to the CA certificate. Deleting it, or copying back an
older CRL that the CA really signed (before the leaked key was revoked), used to make the
coordinator treat the key as valid again. Now the last accepted CRL stays in force: an
older one (by CRL number, else thisUpdate) or a missing file is refused loudly, also after
a restart (the coordinator keeps the last good CRL in its store: ``last_good``).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from fedsynth.pki import init_ca, issue_site
from fedsynth.revocation import RevocationError, RevocationList, crl_info, revoke_certificate

SITES = ("mtf-alpha", "mtf-bravo", "mtf-charlie")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    init_ca(root)
    for name in SITES:
        issue_site(root, name)
    return root


def _serial(pki: Path, site: str) -> int:
    return x509.load_pem_x509_certificate((pki / f"{site}.crt").read_bytes()).serial_number


def _crls(pki: Path) -> tuple[bytes, bytes]:
    """CRL 1 revokes alpha; CRL 2 (the current file) revokes alpha and bravo."""
    revoke_certificate(pki, site="mtf-alpha")
    first = (pki / "revoked.crl").read_bytes()
    revoke_certificate(pki, site="mtf-bravo")
    return first, (pki / "revoked.crl").read_bytes()


def test_revocations_carry_a_growing_crl_number(pki):
    first, second = _crls(pki)
    one, two = crl_info(first, pki / "ca.crt"), crl_info(second, pki / "ca.crt")
    assert (one.number, two.number) == (1, 2)
    assert two.serials == {_serial(pki, "mtf-alpha"), _serial(pki, "mtf-bravo")}


def test_rollback_to_an_older_signed_crl_is_refused(pki, caplog):
    first, _ = _crls(pki)
    refused: list[str] = []
    revocations = RevocationList(pki / "revoked.crl", pki / "ca.crt",
                                 on_refuse=refused.append)
    bravo = _serial(pki, "mtf-bravo")
    assert revocations.is_revoked(bravo)
    (pki / "revoked.crl").write_bytes(first)             # validly signed, but older
    with caplog.at_level(logging.ERROR, logger="fedsynth.revocation"):
        # before the fix: False (bravo's leaked key works again)
        assert revocations.is_revoked(bravo)
    assert revocations.is_revoked(_serial(pki, "mtf-alpha"))
    assert not revocations.is_revoked(_serial(pki, "mtf-charlie"))
    assert refused and "older (CRL number 1)" in refused[0] and "CRL number 2" in refused[0]
    assert "REFUSED" in caplog.text and "last good list stays in force" in caplog.text
    assert revocations.refused is not None
    assert len(refused) == 1 and revocations.is_revoked(bravo)       # refused once, loudly


def test_deleted_crl_is_refused_and_the_last_good_one_stays(pki):
    _crls(pki)
    refused: list[str] = []
    revocations = RevocationList(pki / "revoked.crl", pki / "ca.crt",
                                 on_refuse=refused.append)
    (pki / "revoked.crl").unlink()
    # before the fix: a missing file meant "nothing revoked"
    assert revocations.is_revoked(_serial(pki, "mtf-bravo"))
    assert refused and "missing" in refused[0]


def test_the_last_good_crl_survives_a_restart(pki):
    first, second = _crls(pki)
    kept: list[bytes] = []
    RevocationList(pki / "revoked.crl", pki / "ca.crt", on_accept=kept.append)
    assert kept and crl_info(kept[-1]).number == 2
    bravo = _serial(pki, "mtf-bravo")
    # the file is deleted, or rolled back, while the coordinator is down
    (pki / "revoked.crl").unlink()
    assert RevocationList(pki / "revoked.crl", pki / "ca.crt",
                          last_good=kept[-1]).is_revoked(bravo)
    (pki / "revoked.crl").write_bytes(first)
    assert RevocationList(pki / "revoked.crl", pki / "ca.crt",
                          last_good=kept[-1]).is_revoked(bravo)


def test_a_newer_crl_is_accepted_and_kept(pki):
    _crls(pki)
    kept: list[bytes] = []
    revocations = RevocationList(pki / "revoked.crl", pki / "ca.crt", on_accept=kept.append)
    revoke_certificate(pki, site="mtf-charlie")
    assert revocations.is_revoked(_serial(pki, "mtf-charlie"))
    assert revocations.refused is None
    assert [crl_info(k).number for k in kept] == [2, 3]
    assert revocations.trusted is not None and revocations.trusted.number == 3


def _unnumbered(pki: Path, serials: list[int], when: dt.datetime) -> bytes:
    """A CRL without a CRL number (as fedsynth wrote them before issue 10)."""
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
               .last_update(when).next_update(when + dt.timedelta(days=30)))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
            .build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_without_crl_numbers_this_update_orders_them(pki):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    alpha, bravo = _serial(pki, "mtf-alpha"), _serial(pki, "mtf-bravo")
    old = _unnumbered(pki, [alpha], now - dt.timedelta(hours=2))
    new = _unnumbered(pki, [alpha, bravo], now - dt.timedelta(hours=1))
    (pki / "revoked.crl").write_bytes(new)
    revocations = RevocationList(pki / "revoked.crl", pki / "ca.crt")
    assert revocations.is_revoked(bravo)
    (pki / "revoked.crl").write_bytes(old)
    assert revocations.is_revoked(bravo)
    assert "older" in (revocations.refused or "")
    # a numbered CRL issued by 'fedsynth ca revoke' afterwards is newer and accepted
    (pki / "revoked.crl").write_bytes(new)
    revoke_certificate(pki, site="mtf-charlie")
    assert revocations.is_revoked(_serial(pki, "mtf-charlie"))
    assert revocations.refused is None


def test_unusable_crl_still_fails_closed(pki):
    _crls(pki)
    revocations = RevocationList(pki / "revoked.crl", pki / "ca.crt")
    (pki / "revoked.crl").write_text("garbage")
    with pytest.raises(RevocationError):
        revocations.is_revoked(_serial(pki, "mtf-charlie"))
    other = pki.parent / "other"
    init_ca(other, name="another CA")
    issue_site(other, "mtf-alpha")
    revoke_certificate(other, site="mtf-alpha")
    shutil.copy(other / "revoked.crl", pki / "revoked.crl")
    with pytest.raises(RevocationError, match="not signed by the CA"):
        revocations.is_revoked(_serial(pki, "mtf-charlie"))
