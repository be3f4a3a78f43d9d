"""The coordinator: gRPC service, rounds and scheduling, state store, reports."""
