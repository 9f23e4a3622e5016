"""Closed-loop gRPC clients (tritonclient.grpc) for the fleet tests, run as a SUBPROCESS (the
pytest process never imports the gRPC stack):

    python harness_grpc_client.py ADDRESS MODEL CLIENTS MAX_SECONDS

Each of CLIENTS threads, on its own channel, sends `add` inferences one after another until
stdin closes (or MAX_SECONDS pass); then one JSON line on stdout, harness_tally.Tally's summary."""

from __future__ import annotations

import json
import sys
import threading

import numpy as np
import tritonclient.grpc as grpcclient
from harness_tally import Tally
from tritonclient.utils import InferenceServerException

INPUT0 = np.arange(16, dtype=np.int32).reshape(1, 16)
INPUT1 = np.ones((1, 16), dtype=np.int32)


def _inputs() -> list:
    out = []
    for name, array in (("INPUT0", INPUT0), ("INPUT1", INPUT1)):
        tensor = grpcclient.InferInput(name, list(array.shape), "INT32")
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def _client_loop(address: str, model: str, stop: threading.Event, tally: Tally) -> None:
    client = grpcclient.InferenceServerClient(address)
    inputs = _inputs()
    while not stop.is_set():
        try:
            result = client.infer(model, inputs, client_timeout=30)
            tally.success(int(result.as_numpy("OUTPUT0")[0, 0] - (INPUT0 + INPUT1)[0, 0]))
        except InferenceServerException as e:
            tally.failure(f"{e.status()}: {(e.message() or '')[:100]}")
        except Exception as e:  # noqa: BLE001 - any failure is counted, with its reason
            tally.failure(f"{type(e).__name__}: {str(e)[:100]}")
    client.close()


def main() -> None:
    address, model, clients, max_seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    stop, tally = threading.Event(), Tally()
    threads = [threading.Thread(target=_client_loop, args=(address, model, stop, tally)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    print("started", flush=True)
    reader = threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True)
    reader.start()
    reader.join(max_seconds)
    stop.set()
    for thread in threads:
        thread.join(60)
    print(json.dumps(tally.summary()), flush=True)


if __name__ == "__main__":
    main()
