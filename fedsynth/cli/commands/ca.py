"""``fedsynth ca init`` and ``fedsynth ca issue``: the project's certificate authority."""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command


def _init_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, metavar="PKI", help="PKI directory")
    parser.add_argument("--name", default="fedsynth project CA", help="CA common name")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing CA (invalidates every issued certificate)")


def _init(args: argparse.Namespace) -> int:
    # lazy: keeps cryptography out of `fedsynth --help` start-up
    from fedsynth.pki import init_ca

    issued = init_ca(args.dir, name=args.name, force=args.force)
    print(f"CA created: {issued.cert} (key {issued.key}, mode 0600)")
    return 0


def _issue_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, metavar="PKI", help="PKI directory")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--site", metavar="NAME", help="issue a site client certificate")
    who.add_argument("--coordinator", metavar="HOST",
                     help="issue the coordinator server certificate for HOST")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def _issue(args: argparse.Namespace) -> int:
    # lazy: keeps cryptography out of `fedsynth --help` start-up
    from fedsynth.pki import issue_coordinator, issue_site

    if args.site is not None:
        issued = issue_site(args.dir, args.site, force=args.force)
        what = f"site certificate for {issued.name!r}"
    else:
        issued = issue_coordinator(args.dir, args.coordinator, force=args.force)
        what = (f"coordinator certificate for {issued.name!r} "
                "(also valid for localhost and 127.0.0.1)")
    print(f"issued {what}: {issued.cert} (key {issued.key}, mode 0600, "
          f"serial {issued.serial:x})")
    return 0


COMMANDS = [
    Command(("ca", "init"), "create the project CA (ca.crt, ca.key)", _init_args, _init),
    Command(("ca", "issue"), "issue a site or coordinator certificate", _issue_args, _issue),
]
