"""The one place that builds gRPC channels and servers.

Why
---
Every connection of the federation must be mutual TLS with the same limits; building
credentials and options in one module makes that a property of the code base rather than of
each call site (the pattern of Flower's ``grpc_rere`` transport). This module sets:

* **mutual TLS**: the server requires and verifies a client certificate from the project CA
  (``require_client_auth=True``); the client verifies the server against the same CA;
* **message size limits**: a submission is a few kilobytes; 4 MiB caps what a hostile peer
  can make the other side allocate;
* **keepalive**: sites sit behind hospital NAT and firewalls that drop idle flows; HTTP/2
  pings every 20 s keep the flow open and detect a dead peer within ~30 s, and the server is
  told to accept pings that frequent (otherwise it answers with GOAWAY "too_many_pings").

``insecure=True`` builds plain-text channels and servers for local experiments only; it
logs a loud warning every time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.errors import InputError

__all__ = ["TLSFiles", "MAX_MESSAGE_BYTES", "MAX_CONCURRENT_STREAMS", "MAX_CONCURRENT_RPCS",
           "channel_options", "server_options",
           "create_channel", "create_server", "add_port", "warn_insecure"]

log = logging.getLogger(__name__)

#: Largest message either side accepts or sends.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of one side of a mutual-TLS connection.

    Attributes
    ----------
    ca
        The project CA certificate (trust anchor).
    cert
        This side's certificate.
    key
        This side's private key.
    """

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) bytes; :class:`InputError` naming the missing file."""
        out = []
        for field in ("ca", "cert", "key"):
            path = Path(getattr(self, field))
            try:
                out.append(path.read_bytes())
            except OSError as error:
                raise InputError(f"tls.{field} = {str(path)!r} cannot be read: "
                                 f"{error.strerror or error}") from None
        return out[0], out[1], out[2]


def warn_insecure(who: str) -> None:
    """Log and print a loud warning that ``who`` runs without TLS."""
    message = (f"WARNING: {who} is running with --insecure: NO TLS, NO AUTHENTICATION, "
               "summaries travel in clear text. Use only for local experiments, never with "
               "real patient data.")
    log.warning(message)
    print(message, file=sys.stderr, flush=True)


def _common_options() -> list[tuple[str, Any]]:
    """Message size limits and keepalive, the same on both ends of every connection."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def channel_options() -> list[tuple[str, Any]]:
    """gRPC options of every client channel."""
    return _common_options() + [
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect quickly after a coordinator restart; the agent adds its own backoff.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]


def server_options(*, max_concurrent_streams: int | None = None) -> list[tuple[str, Any]]:
    """gRPC options of every server (``max_concurrent_streams`` per connection, default
    :data:`MAX_CONCURRENT_STREAMS`)."""
    return _common_options() + [
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
        ("grpc.max_concurrent_streams", max_concurrent_streams or MAX_CONCURRENT_STREAMS),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.so_reuseport", 0),
    ]


def create_channel(target: str, tls: TLSFiles | None, *, insecure: bool = False,
                   server_name: str | None = None) -> Any:
    """A ``grpc.aio`` channel to ``target`` with mutual TLS (or plain text if ``insecure``).

    ``server_name`` overrides the name checked against the server certificate (default: the
    host part of ``target``).
    """
    import grpc

    if insecure:
        warn_insecure("this site agent")
        return grpc.aio.insecure_channel(target, options=channel_options())
    if tls is None:
        raise InputError("no [tls] section: mutual TLS is required (or pass --insecure for a "
                         "local experiment)")
    ca, cert, key = tls.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                               certificate_chain=cert)
    options = channel_options()
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, credentials, options=options)


#: Streams one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS):
#: a client asking for more waits on its own side, so one connection cannot queue an
#: unbounded number of calls at the server. An agent makes one call at a time.
MAX_CONCURRENT_STREAMS = 32

#: Default bound on calls being served at once by a server (a memory backstop; the
#: coordinator's admission control bounds calls per site well below it).
MAX_CONCURRENT_RPCS = 2048


def create_server(*, interceptors: Sequence[Any] = (),
                  maximum_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
                  max_concurrent_streams: int | None = None) -> Any:
    """A ``grpc.aio`` server with the project's limits (add ports with :func:`add_port`).

    ``maximum_concurrent_rpcs`` refuses calls beyond it with ``RESOURCE_EXHAUSTED`` for
    everybody alike, so it is only a backstop far above what admission control
    (:mod:`coordinator.ratelimit`) lets through: a global limit reached by one site's
    flood is what starved the others. ``max_concurrent_streams`` caps the streams of one
    connection (HTTP/2 ``SETTINGS_MAX_CONCURRENT_STREAMS``: extra calls wait at the client,
    or are refused with ``REFUSED_STREAM`` when sent regardless), so one connection cannot
    fill the server's queue ahead of everybody else's calls.
    """
    import grpc

    return grpc.aio.server(interceptors=list(interceptors),
                           options=server_options(max_concurrent_streams=max_concurrent_streams),
                           maximum_concurrent_rpcs=maximum_concurrent_rpcs)


def add_port(server: Any, address: str, tls: TLSFiles | None, *,
             insecure: bool = False) -> int:
    """Bind ``address`` (port 0 picks a free one) with mutual TLS; return the bound port."""
    import grpc

    if insecure:
        warn_insecure("this coordinator")
        port = server.add_insecure_port(address)
    else:
        if tls is None:
            raise InputError("no [tls] section: mutual TLS is required (or pass --insecure "
                             "for a local experiment)")
        ca, cert, key = tls.read()
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                  require_client_auth=True)
        port = server.add_secure_port(address, credentials)
    if not port:
        raise InputError(f"listen = {address!r}: cannot bind this address")
    return port
