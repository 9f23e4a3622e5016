"""Sequences over gRPC (tritonclient.grpc), run as a SUBPROCESS (the pytest process never imports
the gRPC stack):

    python harness_grpc_sequences.py ADDRESS MODEL STEPS ID [ID ...]

Sends STEPS requests of each sequence (the sequences interleaved, values 1, 2, ...), each with
its id also as `inferd-sequence-id` metadata (the balancer's key); prints one JSON line:
[[id, step, "ok", OUTPUT] or [id, step, "error", message], ...]."""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main() -> None:
    address, model, steps, ids = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(i) for i in sys.argv[4:]]
    client = grpcclient.InferenceServerClient(address)
    results = []
    for step in range(steps):
        for sequence_id in ids:
            tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
            tensor.set_data_from_numpy(np.full((1, 1), step + 1, np.int32))
            try:
                answer = client.infer(model, [tensor], sequence_id=sequence_id, sequence_start=step == 0,
                                      sequence_end=step == steps - 1, headers={"inferd-sequence-id": str(sequence_id)},
                                      client_timeout=30)
                results.append([sequence_id, step, "ok", int(answer.as_numpy("OUTPUT")[0, 0])])
            except InferenceServerException as e:
                results.append([sequence_id, step, "error", (e.message() or "")[:200]])
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
