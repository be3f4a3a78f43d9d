"""The checked-in stubs under fedsynth/v1 must equal a fresh generation from proto/."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from fedsynth.v1 import _generate

REPO = Path(__file__).resolve().parents[2]


def test_stubs_match_proto(tmp_path: Path) -> None:
    if version("grpcio-tools") != _generate.PINNED_GRPCIO_TOOLS:
        pytest.fail(f"grpcio-tools {version('grpcio-tools')} installed; the stubs are pinned "
                    f"to {_generate.PINNED_GRPCIO_TOOLS} (pip install '.[test]')")
    generated = _generate.generate(tmp_path)
    assert generated, "protoc produced nothing"
    names = sorted(p.name for p in generated)
    checked_in = sorted(p.name for p in (REPO / "fedsynth" / "v1").glob("*_pb2*.py*"))
    assert names == checked_in, "a .proto was added or removed: run scripts/gen_proto.sh"
    for path in generated:
        ours = REPO / "fedsynth" / "v1" / path.name
        assert ours.read_text() == path.read_text(), (
            f"fedsynth/v1/{path.name} differs from proto/: run scripts/gen_proto.sh")


def test_every_message_names_the_protocol_version() -> None:
    from fedsynth.v1 import federation_pb2 as pb

    exchanged = [m for name, m in pb.DESCRIPTOR.message_types_by_name.items()
                 if name.endswith(("Request", "Reply"))
                 or name in ("Submission", "ModelStep", "StepAnswer")]
    assert len(exchanged) == 14
    for message in exchanged:
        assert "protocol_version" in message.fields_by_name, message.name


def test_service_methods() -> None:
    from fedsynth.v1 import federation_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Federation"]
    assert [m.name for m in service.methods] == ["Register", "Heartbeat", "PullWork", "Submit",
                                                  "StreamSteps", "AnswerStep"]
