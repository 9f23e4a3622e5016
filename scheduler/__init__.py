"""Per-model queues, dynamic batching and worker pools. Knows nothing of HTTP or gRPC."""
