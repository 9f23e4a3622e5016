"""Three real daemons behind HAProxy running the shipped packaging/fleet/haproxy.cfg, under
closed-loop HTTP and gRPC load (harness_scenarios.py): a host killed, a host stopped, a new
model version in the store, a host that joins late. What each run measured (failed requests
and their reasons, times) goes to the fleet report (conftest.py)."""

from __future__ import annotations

import difflib
import re
import subprocess
import time
from pathlib import Path

from harness_haproxy import SHIPPED, render, require_haproxy
from harness_load import AFTER_S, WARM_S, failed
from harness_scenarios import kill_one, new_version, stop_one


def test_shipped_config_is_valid():
    check = subprocess.run([require_haproxy(), "-c", "-f", str(SHIPPED)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def clients(result: dict) -> list[dict]:
    """The per-kind counts (http, http_big, grpc) in a scenario's result."""
    return [value for value in result.values() if isinstance(value, dict) and "failures" in value]


def test_sigkill_one_host_under_load(haproxy_fleet, load_through, fleet_report):
    fleet, balancer = haproxy_fleet()
    load = load_through(balancer)
    result = kill_one(fleet, balancer, load)
    fleet_report("sigkill_one_of_3", result)
    assert result["seconds_to_haproxy_down"] is not None
    assert all(kind["ok"] for kind in clients(result)), result
    # A killed host takes with it the answers it was writing and the requests HAProxy cannot
    # replay (over its buffer); a few, at most about one per client. The report says how many.
    assert result["failed"] <= load.clients, result


def test_sigterm_one_host_under_load(haproxy_fleet, load_through, fleet_report):
    # The host reports not ready for 2 s before it stops accepting: HAProxy's checks (200 ms x 2
    # in the test) take it out of rotation first, so no request is refused or cut.
    fleet, balancer = haproxy_fleet(env={"INFERD_SERVER_DRAIN_DELAY_S": "2"})
    result = stop_one(fleet, balancer, load_through(balancer))
    fleet_report("sigterm_one_of_3", result)
    assert result["exit_code"] == 0
    assert result["seconds_to_haproxy_down"] is not None
    assert all(kind["ok"] for kind in clients(result)), result
    assert result["failed"] == 0, result


def test_new_version_in_the_store_under_load(s3, haproxy_fleet, load_through, fleet_report):
    fleet, balancer = haproxy_fleet(s3=s3)
    result = new_version(fleet, balancer, load_through(balancer))
    fleet_report("new_version_3_hosts", result)
    assert None not in result["seconds_upload_to_each_host"], result
    assert all(kind["versions"].get("2") for kind in clients(result)), result
    assert result["failed"] == 0, result


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


def without_check_intervals(lines: list[str]) -> list[str]:
    """The default-server lines, their check intervals taken out."""
    return [re.sub(r"\b(inter|fastinter|downinter) \S+", "", line) for line in lines if "default-server" in line]


def test_the_tests_run_the_shipped_config():
    # What the tests change: addresses, binds, check intervals, and the installed system's paths.
    rendered = render([(1001, 1002), (2001, 2002), (3001, 3002)], {"http": 1, "grpc": 2, "stats": 3},
                      Path("/run-dir")).splitlines()
    shipped = SHIPPED.read_text().splitlines()
    changed = [line for line in difflib.ndiff(shipped, rendered) if line[:2] in ("- ", "+ ")]
    allowed = re.compile(r"[-+] +(server inferd\d |bind |default-server |log |stats socket |chroot |user |group )")
    assert changed and all(allowed.match(line) for line in changed), changed
    assert without_check_intervals(shipped) == without_check_intervals(rendered)  # nothing else on those
