"""Three real daemons behind HAProxy running the shipped packaging/fleet/haproxy.cfg, under
closed-loop HTTP and gRPC load: a host killed, a host stopped, a new model version in the
store. What each run measured (failed requests and their reasons, times) goes to the fleet
report (conftest.py)."""

from __future__ import annotations

import subprocess
import threading
import time

from harness_haproxy import SHIPPED, require_haproxy
from harness_load import AFTER_S, WARM_S, failed, wait_served


def test_shipped_config_is_valid():
    check = subprocess.run([require_haproxy(), "-c", "-f", str(SHIPPED)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_sigkill_one_host_under_load(haproxy_fleet, load_through, fleet_report):
    fleet, balancer = haproxy_fleet()
    load = load_through(balancer)
    time.sleep(WARM_S)
    fleet.daemons[1].proc.kill()
    down_s = balancer.wait_state("inferd2", "DOWN")
    time.sleep(AFTER_S)
    counts = load.stop()
    fleet_report("sigkill_one_of_3", {"failed": failed(counts), "seconds_to_haproxy_down": down_s,
                                      "haproxy": balancer.retries(), **counts})
    assert down_s is not None
    assert all(kind["ok"] for kind in counts.values()), counts
    # A killed host may take the requests it was running with it (those HAProxy cannot replay);
    # at most one per client. The report says how many it was.
    assert failed(counts) <= load.clients, counts


def test_sigterm_one_host_under_load(haproxy_fleet, load_through, fleet_report):
    # The host reports not ready for 2 s before it stops accepting: HAProxy's checks (200 ms x 2
    # in the test) take it out of rotation first, so no request is refused or cut.
    fleet, balancer = haproxy_fleet(env={"INFERD_SERVER_DRAIN_DELAY_S": "2"})
    load = load_through(balancer)
    time.sleep(WARM_S)
    victim, exit_code = fleet.daemons[1], []
    stopping = threading.Thread(target=lambda: exit_code.append(victim.terminate()))
    stopping.start()
    down_s = balancer.wait_state("inferd2", "DOWN")
    stopping.join(60)
    time.sleep(AFTER_S / 2)
    counts = load.stop()
    fleet_report("sigterm_one_of_3", {"failed": failed(counts), "seconds_to_haproxy_down": down_s,
                                      "exit_code": exit_code, "haproxy": balancer.retries(), **counts})
    assert exit_code == [0]
    assert down_s is not None
    assert all(kind["ok"] for kind in counts.values()), counts
    assert failed(counts) == 0, counts


def test_new_version_in_the_store_under_load(s3, haproxy_fleet, load_through, fleet_report):
    fleet, balancer = haproxy_fleet(s3=s3)
    load = load_through(balancer)
    time.sleep(WARM_S)
    fleet.upload(2)
    uploaded = time.monotonic()
    per_host = wait_served([d.url for d in fleet.daemons], 2, since=uploaded)
    time.sleep(AFTER_S / 2)
    counts = load.stop()
    first_v2 = [float(c["first_seen"]["2"]) - uploaded for c in counts.values() if "2" in c["first_seen"]]
    fleet_report("new_version_3_hosts", {
        "failed": failed(counts), "poll_interval_s": fleet.poll_interval_s,
        "seconds_upload_to_each_host": per_host,
        "seconds_upload_to_all_hosts": max(per_host) if None not in per_host else None,
        "seconds_upload_to_first_v2_through_haproxy": min(first_v2) if first_v2 else None, **counts})
    assert None not in per_host, per_host
    assert all(kind["versions"].get("2") for kind in counts.values()), counts
    assert failed(counts) == 0, counts


def test_a_host_without_its_model_takes_no_traffic(haproxy_fleet, load_through, fleet_report):
    # Host 3 starts with an empty directory: with server.ready_models = ["add"] it is not ready,
    # so HAProxy keeps it out (without, it would answer 404s); once the model lands, it joins.
    fleet, balancer = haproxy_fleet(env={"INFERD_SERVER_READY_MODELS": "add"}, empty=(3,))
    load = load_through(balancer)
    time.sleep(WARM_S)
    before = balancer.sessions("inferd3")
    fleet.place(3, 1)
    up_s = balancer.wait_state("inferd3", "UP")
    time.sleep(AFTER_S)
    counts = load.stop()
    after = balancer.sessions("inferd3") - before
    fleet_report("host_joins_when_ready", {"failed": failed(counts), "seconds_model_to_haproxy_up": up_s,
                                           "requests_to_host3_before": before, "requests_to_host3_after": after,
                                           **counts})
    assert before == 0
    assert up_s is not None
    assert after > 0  # leastconn: the idle newcomer gets requests (slowstart grows its share)
    assert failed(counts) == 0, counts
