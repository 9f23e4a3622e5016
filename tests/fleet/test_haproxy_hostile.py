"""The fleet behind HAProxy when the store misbehaves, under closed-loop load: a corrupt model
version uploaded, the store hanging. Every host keeps serving what it has, so no request fails;
what each run measured goes to the fleet report (conftest.py). And a client's oversized body,
refused by the balancer before any host sees it."""

from __future__ import annotations

import socket
import time

from harness import MODEL, served_version
from harness_load import WARM_S, failed, wait_served

SHORT_STORE_TIMEOUTS = {"INFERD_MODELS_SOURCE_CONNECT_TIMEOUT_S": "1", "INFERD_MODELS_SOURCE_READ_TIMEOUT_S": "2"}


def test_corrupt_version_in_the_store_under_load(s3, haproxy_fleet, load_through, fleet_report):
    fleet, balancer = haproxy_fleet(s3=s3)
    load = load_through(balancer)
    time.sleep(WARM_S)
    fleet.put(f"{MODEL}/2/model.onnx", b"this is not an onnx model")
    uploaded = time.monotonic()
    per_host = fleet.wait_logged(lambda e: e.get("event") == "model state" and e.get("model") == MODEL
                                 and str(e.get("version")) == "2" and e.get("state") == "FAILED", uploaded)
    time.sleep(0.5)
    counts = load.stop()
    fleet_report("corrupt_version_3_hosts", {"failed": failed(counts), "seconds_upload_to_failed_load": per_host,
                                             **counts})
    assert None not in per_host, per_host  # every host tried it
    assert all(set(kind["versions"]) == {"1"} for kind in counts.values()), counts
    assert failed(counts) == 0, counts
    assert all(state == "UP" for state in balancer.server_states().values())


def test_store_hangs_under_load(s3, haproxy_fleet, load_through, fleet_report):
    fleet, balancer = haproxy_fleet(s3=s3, env=SHORT_STORE_TIMEOUTS)
    load = load_through(balancer)
    time.sleep(WARM_S)
    s3.pause()
    paused = time.monotonic()
    noticed = fleet.wait_logged(lambda e: str(e.get("event", "")).startswith("model source unavailable"), paused)
    s3.resume()
    fleet.upload(2)
    uploaded = time.monotonic()
    per_host = wait_served([d.url for d in fleet.daemons], 2, since=uploaded)
    counts = load.stop()
    fleet_report("store_hangs_3_hosts", {
        "failed": failed(counts), "seconds_hang_to_noticed": noticed,
        "seconds_upload_after_hang_to_each_host": per_host, **counts})
    assert None not in noticed, noticed
    assert None not in per_host, per_host
    assert failed(counts) == 0, counts
    assert all(state == "UP" for state in balancer.server_states().values())


def test_a_body_over_64_mib_is_refused_at_the_balancer(haproxy_fleet):
    fleet, balancer = haproxy_fleet()
    with socket.create_connection(("127.0.0.1", balancer.ports["http"]), timeout=30) as s:
        s.sendall(b"POST /v2/models/add/infer HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n{" % (64 * 1024 * 1024 + 1))
        status = s.makefile("rb").readline()
    assert status.startswith(b"HTTP/1.1 413"), status
    assert balancer.sessions("inferd1") + balancer.sessions("inferd2") + balancer.sessions("inferd3") == 0
    assert served_version(balancer.http_url) == 1  # and the fleet serves on
