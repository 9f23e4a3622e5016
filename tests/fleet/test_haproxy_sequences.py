"""Stateful models behind the shipped HAProxy config: the requests of a sequence carry its
sequence_id in their JSON parameters, and inferd_sequences hashes on it, so every request of a
sequence reaches the host that holds its state (through leastconn, most would reach another
host and be refused: "must specify the START flag")."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from sequence_models import write_python

SEQUENCES = [101 + i for i in range(8)]  # (not a multiple of 3: round robin would move them)
STEPS = 4


def step(url: str, sequence_id: int, value: int, start: bool, end: bool) -> tuple[int, object]:
    """One request of a sequence to the accumulator: (HTTP status, its OUTPUT or the error)."""
    body = {"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [value]}],
            "parameters": {"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end}}
    request = urllib.request.Request(f"{url}/v2/models/acc/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    [output] = [o for o in answer["outputs"] if o["name"] == "OUTPUT"]
    return 200, output["data"][0]


def test_each_sequence_stays_on_one_host(haproxy_fleet, fleet_report):
    fleet, balancer = haproxy_fleet(models=lambda d: write_python(d, "acc", "accumulate", corrid="TYPE_UINT64"))
    got, want = {}, {}
    for n in range(STEPS):  # the sequences interleaved, as concurrent clients would send them
        for sequence_id in SEQUENCES:
            start, end = n == 0, n == STEPS - 1
            got[sequence_id, n] = step(balancer.http_url, sequence_id, n + 1, start, end)
            # the running sum, plus the sequence id on its END request (sequence_models.py)
            want[sequence_id, n] = (200, sum(range(1, n + 2)) + (sequence_id if end else 0))
    per_host = {f"inferd{i}": balancer.sessions(f"inferd{i}") for i in (1, 2, 3)}
    wrong = {key: value for key, value in got.items() if value != want[key]}
    fleet_report("sequences_sticky", {"sequences": len(SEQUENCES), "steps": STEPS, "wrong": len(wrong),
                                      "requests_per_host": per_host})
    assert not wrong, wrong
    assert sum(1 for n in per_host.values() if n) >= 2, per_host  # spread, not all on one host
