"""The gRPC policy server: episodes with frame histories, a micro-batching model worker."""
