#!/usr/bin/env bash
# Regenerate fedsynth/v1/*_pb2*.py from proto/fedsynth/v1/*.proto with the pinned grpcio-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m fedsynth.v1._generate "$@"
