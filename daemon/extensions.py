"""The V2 protocol extensions inferd implements, under Triton's names: what server metadata lists
(HTTP GET /v2 and gRPC ServerMetadata). A feature adds its name here, one line, when it works over
both HTTP and gRPC, and to the expected set in tests/e2e/test_extensions.py. What Triton has no
name for (gRPC compression, grpc.health.v1, server reflection) is not listed."""

EXTENSIONS = (
    "binary_tensor_data",  # HTTP's binary tensor data (frontends/http_codec.py); gRPC's raw contents
    "classification",  # an output's top k (daemon/classification.py), HTTP, gRPC and the Unix socket
    "cuda_shared_memory",  # /v2/cudasharedmemory/..., CudaSharedMemory* (daemon/cuda_memory.py), listed with or
    # without a GPU, as by Triton: without one, register answers that this server has none
    "model_configuration",  # /v2/models/<m>/config, ModelConfig
    "model_repository",  # /v2/repository/..., RepositoryIndex, RepositoryModelLoad/Unload
    "sequence",  # sequence_id/sequence_start/sequence_end for [sequence_batching] models (scheduler/sequences.py)
    "statistics",  # /v2/models/<m>/stats, ModelStatistics
    "system_shared_memory",  # /v2/systemsharedmemory/..., SystemSharedMemory* (daemon/shared_memory.py)
)
