"""Regenerate the checked-in gRPC stubs of ``proto/fedsynth/v1`` into ``fedsynth/v1``.

Run ``python -m fedsynth.v1._generate`` (or ``scripts/gen_proto.sh``) after editing a
``.proto`` file. The stubs are produced by the grpcio-tools version pinned in
pyproject.toml (``grpcio-tools==1.85.1``): a different version writes different code, and
``tests/unit/test_proto_drift.py`` fails when the checked-in stubs differ from a fresh
generation. The proto path mirrors the Python package (as Flower does), so generated
imports read ``from fedsynth.v1 import federation_pb2``.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

#: The grpcio-tools release the checked-in stubs are generated with.
PINNED_GRPCIO_TOOLS = "1.85.1"

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The ``.proto`` files of package fedsynth.v1, sorted."""
    return sorted((proto_root / "fedsynth" / "v1").glob("*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) on every proto file, writing under ``out_dir``.

    Returns the generated files. Raises ``RuntimeError`` when the installed grpcio-tools is
    not the pinned version or protoc fails.
    """
    # lazy: grpcio-tools is a test/dev-only dependency (the stub generator)
    from grpc_tools import protoc

    installed = version("grpcio-tools")
    if installed != PINNED_GRPCIO_TOOLS:
        raise RuntimeError(f"grpcio-tools {installed} is installed but the stubs are pinned to "
                           f"{PINNED_GRPCIO_TOOLS}: pip install grpcio-tools=="
                           f"{PINNED_GRPCIO_TOOLS}")
    # lazy: grpcio-tools is a test/dev-only dependency (the stub generator)
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(proto_root)) for p in proto_files(proto_root)]
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *files]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    return sorted((out_dir / "fedsynth" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    generated = generate(ROOT)
    for path in generated:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
