"""The project CA: files, modes, names, SANs, no silent overwrite; signing with site keys."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsynth.errors import InputError
from fedsynth.pki import init_ca, issue_coordinator, issue_site, validate_site_name
from fedsynth.signing import SignatureError, load_certificate, load_private_key, sign, verify


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki") / "pki"
    init_ca(root)
    issue_coordinator(root, "coord.example.org")
    issue_site(root, "mtf-alpha")
    issue_site(root, "mtf-bravo")
    return root


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_and_key_modes(pki: Path) -> None:
    for stem in ("ca", "coordinator", "mtf-alpha", "mtf-bravo"):
        assert (pki / f"{stem}.crt").exists()
        assert stat.S_IMODE((pki / f"{stem}.key").stat().st_mode) == 0o600
    assert not list(pki.glob("*.tmp"))


def test_site_certificate_names_the_site(pki: Path) -> None:
    cert = _cert(pki / "mtf-alpha.crt")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mtf-alpha"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mtf-alpha"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    ca = _cert(pki / "ca.crt")
    cert.verify_directly_issued_by(ca)


def test_coordinator_sans(pki: Path) -> None:
    cert = _cert(pki / "coordinator.crt")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["coord.example.org", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_ca_is_a_ca(pki: Path) -> None:
    ca = _cert(pki / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_no_silent_overwrite(pki: Path) -> None:
    before = (pki / "mtf-alpha.crt").read_bytes()
    with pytest.raises(InputError, match="already exists.*--force"):
        issue_site(pki, "mtf-alpha")
    with pytest.raises(InputError, match="already exists"):
        init_ca(pki)
    assert (pki / "mtf-alpha.crt").read_bytes() == before


def test_force_replaces(tmp_path: Path) -> None:
    init_ca(tmp_path)
    first = issue_site(tmp_path, "mtf-x")
    second = issue_site(tmp_path, "mtf-x", force=True)
    assert first.serial != second.serial


def test_issue_without_ca(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="ca init"):
        issue_site(tmp_path, "mtf-alpha")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["", "MTF", "a b", "../x", "x" * 64, "ca", "coordinator",
                                  "-lead"])
def test_bad_site_names(name: str) -> None:
    with pytest.raises(InputError, match="site name"):
        validate_site_name(name)


def test_sign_and_verify(pki: Path) -> None:
    key = load_private_key(pki / "mtf-alpha.key")
    data = b"the exact submission bytes"
    signature = sign(key, data)
    verify(load_certificate(pki / "mtf-alpha.crt"), data, signature)
    with pytest.raises(SignatureError):
        verify(load_certificate(pki / "mtf-alpha.crt"), data + b"!", signature)
    with pytest.raises(SignatureError):
        verify(load_certificate(pki / "mtf-bravo.crt"), data, signature)


def test_cli(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedsynth", *args], capture_output=True,
                              text=True, timeout=60)

    assert run("ca", "init", "--dir", str(tmp_path)).returncode == 0
    result = run("ca", "issue", "--dir", str(tmp_path), "--site", "mtf-zulu")
    assert result.returncode == 0 and "mtf-zulu" in result.stdout
    again = run("ca", "issue", "--dir", str(tmp_path), "--site", "mtf-zulu")
    assert again.returncode == 2 and "--force" in again.stderr and again.stdout == ""
    bad = run("ca", "issue", "--dir", str(tmp_path), "--site", "Bad Name")
    assert bad.returncode == 2 and "'Bad Name'" in bad.stderr
