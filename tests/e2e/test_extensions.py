"""Server metadata lists exactly the extensions inferd implements (daemon/extensions.py), the
same over HTTP and gRPC, through tritonclient."""

from __future__ import annotations

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

EXPECTED = {"binary_tensor_data", "classification", "cuda_shared_memory", "model_configuration", "model_repository",
            "sequence", "statistics", "system_shared_memory"}


def test_server_metadata_lists_exactly_the_implemented_extensions(daemon):
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    grpc_client = grpcclient.InferenceServerClient(event["address"])
    http_client = httpclient.InferenceServerClient("{}:{}".format(*daemon.address))
    try:
        over_grpc = list(grpc_client.get_server_metadata().extensions)
        over_http = http_client.get_server_metadata()["extensions"]
    finally:
        grpc_client.close()
        http_client.close()
    assert sorted(over_grpc) == sorted(over_http) == sorted(EXPECTED)
    assert len(over_http) == len(set(over_http))
