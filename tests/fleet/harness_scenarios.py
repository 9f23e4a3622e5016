"""The fleet scenarios, shared by the tests (tests/fleet/test_haproxy.py, which assert on them)
and bench/fleet.py (which repeats and prints them): three daemons behind HAProxy under
closed-loop load, then one event. Each returns what it measured: counts by kind of client
(harness_load.Load.stop), failed requests in all, and the event's times in seconds."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harness import Fleet
from harness_haproxy import HAProxy
from harness_load import AFTER_S, WARM_S, Load, failed, wait_served
from s3_server import S3Server

VICTIM = 2  # the host a scenario kills or stops (inferd2 in HAProxy)


@contextlib.contextmanager
def running_fleet(root: Path, s3: S3Server | None = None, env: dict | None = None, empty: tuple[int, ...] = (),
                  models: Callable[[Path], None] | None = None):
    """(Fleet, HAProxy): three daemons behind the shipped config, stopped on exit. The `empty`
    hosts start without the model, their servers DOWN; `models` adds to each directory."""
    with contextlib.ExitStack() as stack:
        fleet = Fleet(root / "fleet", s3=s3, env=env, empty=empty, models=models)
        stack.callback(fleet.stop)
        fleet.start()
        hosts = [(d.address[1], int(fleet.grpc_address(d).rsplit(":", 1)[1])) for d in fleet.daemons]
        (root / "haproxy").mkdir()
        balancer = HAProxy(root / "haproxy", hosts)
        stack.callback(balancer.stop)
        balancer.start(down=tuple(f"inferd{i}" for i in empty))
        yield fleet, balancer


def kill_one(fleet: Fleet, balancer: HAProxy, load: Load) -> dict:
    """SIGKILL one host under load."""
    time.sleep(WARM_S)
    fleet.daemons[VICTIM - 1].proc.kill()
    down_s = balancer.wait_state(f"inferd{VICTIM}", "DOWN")
    time.sleep(AFTER_S)
    counts = load.stop()
    return {"failed": failed(counts), "seconds_to_haproxy_down": down_s, "haproxy": balancer.retries(), **counts}


def stop_one(fleet: Fleet, balancer: HAProxy, load: Load) -> dict:
    """SIGTERM one host under load (it drains: not ready for drain_delay_s first)."""
    time.sleep(WARM_S)
    victim, exit_code = fleet.daemons[VICTIM - 1], []
    stopping = threading.Thread(target=lambda: exit_code.append(victim.terminate()))
    started = time.monotonic()
    stopping.start()
    down_s = balancer.wait_state(f"inferd{VICTIM}", "DOWN")
    stopping.join(60)
    exited_s = time.monotonic() - started
    time.sleep(AFTER_S / 2)
    counts = load.stop()
    return {"failed": failed(counts), "seconds_to_haproxy_down": down_s, "seconds_to_exit": exited_s,
            "exit_code": exit_code[0] if exit_code else None, "haproxy": balancer.retries(), **counts}


def new_version(fleet: Fleet, balancer: HAProxy, load: Load) -> dict:
    """Upload version 2 to the store under load; from the upload (its PUT answered) to each host
    answering with version 2 (asked directly, every 50 ms), and of that, each host's own load."""
    time.sleep(WARM_S)
    fleet.upload(2)
    uploaded = time.monotonic()
    per_host = wait_served([d.url for d in fleet.daemons], 2, since=uploaded)
    time.sleep(AFTER_S / 2)
    counts = load.stop()
    first_v2 = [float(c["first_seen"]["2"]) - uploaded for c in counts.values() if "2" in c["first_seen"]]
    return {"failed": failed(counts), "poll_interval_s": fleet.poll_interval_s,
            "seconds_upload_to_each_host": per_host,
            "seconds_upload_to_all_hosts": None if None in per_host else max(per_host),
            "seconds_each_host_loading_v2": fleet.load_seconds(2),
            "seconds_upload_to_first_v2_through_haproxy": min(first_v2) if first_v2 else None, **counts}
