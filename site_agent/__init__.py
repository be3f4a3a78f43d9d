"""The site agent: data connectors, privacy guard, policy, gRPC client, run loop."""
