"""Fixtures for the fleet tests: real daemons behind a real balancer, models from a real (moto)
S3 store, and the report of what was measured (failed requests, times) as JSON: at
$FLEET_REPORT, else fleet-report.json in pytest's base temporary directory; printed in
the terminal summary too."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from harness_haproxy import HAProxy, require_haproxy
from harness_load import Load
from harness_scenarios import running_fleet
from s3_server import S3Server

REPORT: dict = {}
_REPORT_PATH: list[Path] = []


@pytest.fixture(scope="session")
def fleet_report(tmp_path_factory):
    """record(name, values): one test's measurements into the JSON report (written at once)."""
    path = Path(os.environ.get("FLEET_REPORT") or tmp_path_factory.getbasetemp() / "fleet-report.json")
    _REPORT_PATH[:] = [path]

    def record(name: str, values: dict) -> None:
        REPORT[name] = values
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(REPORT, indent=2, sort_keys=True) + "\n")
        print(f"{name}: {json.dumps(values, sort_keys=True)}")

    return record


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("fleet measurements")
        for name, values in REPORT.items():
            terminalreporter.write_line(f"{name}: {json.dumps(values, sort_keys=True)}")
        terminalreporter.write_line(f"(written to {_REPORT_PATH[0]})")


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def haproxy_fleet(tmp_path):
    """start(s3=None, env=None, empty=()) -> (Fleet, HAProxy): harness_scenarios.running_fleet,
    stopped at teardown."""
    require_haproxy()
    with contextlib.ExitStack() as stack:
        yield lambda **kwargs: stack.enter_context(running_fleet(tmp_path, **kwargs))


@pytest.fixture
def load_through():
    """load_through(balancer) -> a started Load (stopped at teardown if the test did not)."""
    loads: list[Load] = []

    def start(balancer: HAProxy, **clients) -> Load:
        load = Load(balancer.http_url, balancer.grpc_address, **clients)
        loads.append(load)
        return load.start()

    yield start
    for load in loads:
        load.kill()
