"""``fedsynth sites --config coordinator.toml``: the site registry."""

from __future__ import annotations

import argparse
import json
import sys

from fedsynth.cli.registry import Command
from fedsynth.terminal import printable


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="coordinator.toml")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def revoked_sites(config, names, trusted_der: bytes | None) -> dict[str, str]:
    """``{site: serial (hex)}`` of the sites whose certificate is revoked.

    The revoked serials are those of the CRL file the coordinator reads
    (``revocation``, by default ``revoked.crl`` beside ``ca.crt``) and of the last good
    CRL kept in its state store (which stays in force when the file is removed or
    replaced by an older one). A site's serial is that of its certificate
    ``<PKI>/<site>.crt`` beside ``ca.crt``, where ``fedsynth ca issue`` writes it; a site
    without a certificate there cannot be matched (nothing is claimed about it).
    """
    # lazy: cryptography and fedsynth.revocation are not loaded by `fedsynth --help`
    from cryptography import x509

    # lazy: cryptography and fedsynth.revocation are not loaded by `fedsynth --help`
    from fedsynth.errors import InputError
    from fedsynth.revocation import crl_info, load_revoked_serials

    if config.tls is None:
        return {}
    serials: set[int] = set()
    if config.revocation is not None:
        try:
            serials |= load_revoked_serials(config.revocation, config.tls.ca)
        except InputError as error:
            print(f"fedsynth: warning: revocation list: {error} (the coordinator refuses "
                  "every call until it is fixed)", file=sys.stderr)
    if trusted_der is not None:
        try:
            serials |= crl_info(trusted_der).serials
        except InputError:
            pass                    # the file's CRL above is the one reported
    if not serials:
        return {}
    pki = config.tls.ca.parent
    out = {}
    for name in names:
        cert_path = pki / f"{name}.crt"
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError):
            continue
        if cert.serial_number in serials:
            out[name] = f"{cert.serial_number:x}"
    return out


def _run(args: argparse.Namespace) -> int:
    # lazy: keeps sqlalchemy out of `fedsynth --help` start-up
    from coordinator.store import Store

    # lazy: fedsynth.config is not loaded by `fedsynth --help` (start-up)
    from fedsynth.config import load_coordinator_config

    # lazy: fedsynth.timeutil is not loaded by `fedsynth --help` (start-up)
    from fedsynth.timeutil import utcnow

    config = load_coordinator_config(args.config, insecure=True)
    with Store(config.state) as store:
        known = {s.name: s for s in store.list_sites()}
        trusted = store.trusted_crl()
    now = utcnow()
    names = sorted(set(config.allow) | set(known))
    revoked = revoked_sites(config, names, trusted)
    rows = []
    for name in names:
        record = known.get(name)
        status = record.status(now, config.online_within) if record else "never seen"
        rows.append({
            "site": name, "allowed": name in config.allow,
            # a revoked certificate is refused on every call, whatever its heartbeats said
            "status": "revoked" if name in revoked else status,
            "revoked": name in revoked,
            "revoked_serial": revoked.get(name),
            "last_heartbeat": record.last_heartbeat if record else None,
            "agent_version": record.agent_version if record else None,
            "registered_at": record.registered_at if record else None})
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'site':<20} {'allowed':<7} {'status':<10} {'agent':<8} last_heartbeat")
    for r in rows:
        # The site name and agent version came from the site: shown escaped, never raw.
        allowed = "yes" if r["allowed"] else "NO"
        if r["revoked"]:
            allowed = "REVOKED"     # listed in sites.allow, but its certificate is refused
        print(f"{printable(r['site']):<20} {allowed:<7} "
              f"{r['status']:<10} {printable(r['agent_version'] or '-'):<8} "
              f"{printable(r['last_heartbeat'] or '-')}")
    return 0


COMMANDS = [Command(("sites",), "the coordinator's site registry (status, last heartbeat)",
                    _args, _run)]
