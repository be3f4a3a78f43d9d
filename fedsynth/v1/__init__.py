"""Generated protobuf and gRPC stubs of the wire protocol ``fedsynth.v1``.

Do not edit ``*_pb2*.py``: regenerate with ``python -m fedsynth.v1._generate``.
"""
