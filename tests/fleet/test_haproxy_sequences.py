"""Stateful models behind the shipped HAProxy config: every request of a sequence must reach the
host that holds its state (through leastconn, most would reach another host and be refused:
"must specify the START flag"). Over HTTP, inferd_sequences hashes on the sequence_id in the
JSON parameters; over gRPC, inferd_grpc_sequences on the `inferd-sequence-id` metadata."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from sequence_models import write_python

GRPC_SEQUENCES = Path(__file__).with_name("harness_grpc_sequences.py")
SEQUENCES = [101 + i for i in range(8)]  # (not a multiple of 3: round robin would move them)
STEPS = 4


def step(url: str, sequence_id: int, value: int, start: bool, end: bool, binary: bool) -> tuple[int, object]:
    """One request of a sequence to the accumulator, as JSON or as binary tensor data after a
    JSON header: (HTTP status, its OUTPUT or the error)."""
    tensor = {"name": "INPUT", "shape": [1, 1], "datatype": "INT32"}
    tensor |= {"parameters": {"binary_data_size": 4}} if binary else {"data": [value]}
    body = json.dumps({"inputs": [tensor], "outputs": [{"name": "OUTPUT"}],
                       "parameters": {"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end}}).encode()
    headers = {"Content-Type": "application/json"}
    if binary:
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(body))}
        body += np.int32(value).tobytes()
    request = urllib.request.Request(f"{url}/v2/models/acc/infer", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    [output] = [o for o in answer["outputs"] if o["name"] == "OUTPUT"]
    return 200, output["data"][0]


def expected(sequence_id: int, n: int) -> int:
    """The accumulator's answer to step n (values 1, 2, ...): the running sum, plus the sequence
    id on its END request (sequence_models.py)."""
    return sum(range(1, n + 2)) + (sequence_id if n == STEPS - 1 else 0)


def spread(balancer, backend: str) -> dict[str, int]:
    """Requests each host got from `backend`."""
    return {row["svname"]: int(row["stot"] or 0) for row in balancer.stats()
            if row["pxname"] == backend and row["svname"].startswith("inferd")}


def test_each_sequence_stays_on_one_host(haproxy_fleet, fleet_report):
    fleet, balancer = haproxy_fleet(models=lambda d: write_python(d, "acc", "accumulate", corrid="TYPE_UINT64"))
    wrong = {}
    for n in range(STEPS):  # the sequences interleaved, as concurrent clients would send them
        for sequence_id in SEQUENCES:
            # half the sequences in binary-tensor requests: HAProxy reads the JSON that starts them
            got = step(balancer.http_url, sequence_id, n + 1, n == 0, n == STEPS - 1, binary=sequence_id % 2 == 1)
            if got != (200, expected(sequence_id, n)):
                wrong[sequence_id, n] = got
    done = subprocess.run([sys.executable, str(GRPC_SEQUENCES), balancer.grpc_address, "acc", str(STEPS),
                           *map(str, SEQUENCES)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    wrong_grpc = [r for r in json.loads(done.stdout) if r[2:] != ["ok", expected(r[0], r[1])]]
    per_host = {"http": spread(balancer, "inferd_sequences"), "grpc": spread(balancer, "inferd_grpc_sequences")}
    fleet_report("sequences_sticky", {"sequences": len(SEQUENCES), "steps": STEPS, "wrong_http": len(wrong),
                                      "wrong_grpc": len(wrong_grpc), "requests_per_host": per_host})
    assert not wrong, wrong
    assert not wrong_grpc, wrong_grpc
    for kind in per_host.values():  # every request through the sequence route, spread over hosts
        assert sum(kind.values()) == len(SEQUENCES) * STEPS and sum(1 for n in kind.values() if n) >= 2, per_host
