"""``fedsynth ca revoke --dir PKI --site NAME``: add a site's certificate to the CA's CRL."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsynth.cli.registry import Command


def _serial(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--serial: not a hexadecimal number: {text!r}")


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, metavar="PKI",
                        help="PKI directory with ca.crt and ca.key (from 'fedsynth ca init')")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--site", metavar="NAME", help="revoke PKI/NAME.crt")
    who.add_argument("--serial", type=_serial, metavar="HEX",
                     help="revoke a certificate by its serial number (hex)")
    parser.add_argument("--reason", default="key_compromise",
                        help="RFC 5280 reason: key_compromise (default), superseded, "
                             "cessation_of_operation, affiliation_changed, unspecified")


def _run(args: argparse.Namespace) -> int:
    # lazy: fedsynth.audit is not loaded by `fedsynth --help` (start-up)
    from fedsynth.audit import AuditLog

    # lazy: keeps grpc and cryptography out of `fedsynth --help` start-up
    from fedsynth.revocation import revoke_certificate

    result = revoke_certificate(args.dir, site=args.site, serial=args.serial,
                                reason=args.reason)
    who = args.site or result.subject
    if result.already_revoked:
        print(f"{who}: serial {result.serial:x} was already revoked in {result.crl}")
        return 0
    AuditLog(Path(args.dir) / "ca-audit.jsonl").append(
        "certificate.revoked", {"site": args.site, "serial": f"{result.serial:x}",
                                "subject": result.subject, "reason": args.reason,
                                "crl": str(result.crl)})
    print(f"{who}: revoked serial {result.serial:x} ({args.reason}); {result.crl} now lists "
          f"{result.revoked_count} certificate(s). A running coordinator refuses this "
          "certificate on its next call.")
    return 0


COMMANDS = [Command(
    ("ca", "revoke"), "revoke a site's certificate (coordinator reloads the CRL at once)",
    _add, _run,
    description=("Add a site's certificate to PKI/revoked.crl, an X.509 CRL signed by the "
                 "project CA.\nThe coordinator checks every call's TLS peer certificate "
                 "against it and re-reads it when it changes,\nso a site whose key leaked is "
                 "shut out without a restart. Recorded in PKI/ca-audit.jsonl."))]
