"""perf_analyzer, Triton's load tool, against the daemon on Triton's `simple` model: each run is
a short measurement at concurrency 1 and 2 that must end with a throughput for both.

perf_analyzer is a C++ binary outside the test extras: bench/perf_analyzer_setup.sh installs it
(about 35 s), and `./dev.sh test` does that once and names it in PERF_ANALYZER. Without that
variable the test looks on PATH, and is skipped, saying so, when it finds none."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import triton_models
from daemon_process import DaemonProcess

# One run: its name -> (the front-end, perf_analyzer's flags beyond the model and the address).
RUNS = {
    "http": ("http", ()),
    "grpc": ("grpc", ()),
    "grpc streaming": ("grpc", ("--streaming",)),
    "http system shared memory": ("http", ("--shared-memory", "system")),
    "grpc system shared memory": ("grpc", ("--shared-memory", "system")),
}

# Short on a busy machine: windows of 300 ms, any spread between them accepted (~2 s a run).
# (perf_analyzer's shared-memory region names are fixed: two runs at once on one host collide.)
MEASURE = ("--concurrency-range", "1:2", "--measurement-interval", "300", "--stability-percentage", "1000")


@pytest.fixture(scope="module")
def perf_analyzer() -> str:
    path = os.environ.get("PERF_ANALYZER")
    if path:
        assert os.access(path, os.X_OK), f"PERF_ANALYZER={path} is not an executable"
        return path
    found = shutil.which("perf_analyzer")
    if not found:
        pytest.skip("perf_analyzer is not installed: bench/perf_analyzer_setup.sh DIR, then PERF_ANALYZER=DIR/bin/perf_analyzer")
    return found


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with DaemonProcess(triton_models.make_control_models(tmp_path_factory.mktemp("simple"), 1)) as d:
        yield d


@pytest.mark.parametrize("name", RUNS)
def test_perf_analyzer(perf_analyzer, daemon, name):
    protocol, flags = RUNS[name]
    [grpc] = [e["address"] for e in daemon.events("listening") if e["frontend"] == "grpc"]
    url = daemon.url.removeprefix("http://") if protocol == "http" else grpc
    done = subprocess.run([perf_analyzer, "-m", "simple", "-u", url, "-i", protocol, *MEASURE, *flags],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rates = re.findall(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec", done.stdout)
    assert [c for c, _ in rates] == ["1", "2"] and all(float(r) > 0 for _, r in rates), done.stdout[-3000:]

