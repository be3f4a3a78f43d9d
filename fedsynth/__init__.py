"""fedsynth: federated multisite evidence synthesis.

Sites compute effect estimates from private data and send only summary statistics over
mutual-TLS gRPC; a coordinator pools them (``fedsynth.meta``) with metafor-grade
fixed- and random-effects meta-analysis and flags heterogeneity that a single pooled model
would hide.
"""

from fedsynth._version import __version__

#: Wire-protocol version spoken by this release (see proto/fedsynth/v1).
PROTOCOL_VERSION = "fedsynth.v1"
