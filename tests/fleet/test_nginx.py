"""The shipped nginx configuration (packaging/fleet/nginx.conf) in front of two real daemons.

The file is tested as shipped: only the lines that name this machine's places are replaced
(the upstreams' hosts, the listen ports, the pid, log and temporary paths, the user); nginx
runs in the foreground, started and stopped by PID. Skipped without nginx unless
REQUIRE_BALANCERS=1."""

from __future__ import annotations

import getpass
import http.client
import json
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import make_models
import numpy as np
import pytest
from daemon_process import DaemonProcess
from grpc_infer import grpc_infer
from harness_haproxy import balancer, require_balancer

ROOT = Path(__file__).resolve().parents[2]

SHIPPED = ROOT / "packaging" / "fleet" / "nginx.conf"
NGINX = balancer("nginx")
SHIPPED_HTTP_PORT, SHIPPED_GRPC_PORT = 8000, 8001


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    return require_balancer(NGINX, "nginx")


def render(shipped: str, run_dir: Path, listen: dict[int, int], upstreams: dict[int, list[str]]) -> str:
    """The shipped text with this machine's places: `listen` maps a shipped port to a loopback
    one, `upstreams` a shipped upstream port to the addresses that replace its servers."""
    out, done = [], set()
    for line in shipped.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        words = line.split()
        key = words[0] if words else ""
        if key == "user":
            line = f"{indent}user {getpass.getuser()};"  # the shipped www-data cannot enter tmp_path
        elif key == "pid":
            line = f"{indent}pid {run_dir / 'nginx.pid'};"
        elif key in ("error_log", "access_log"):
            line = f"{indent}{key} {run_dir / (key + '.log')}{' ' + words[2] if len(words) > 2 else ';'}"
        elif key.endswith("_temp_path"):
            line = f"{indent}{key} {run_dir / key};"
        elif key == "listen":
            port = int(words[1].rstrip(";"))
            line = f"{indent}listen 127.0.0.1:{listen[port]}{' ' + ' '.join(words[2:]) if len(words) > 2 else ';'}"
        elif key == "server" and (m := re.match(r"server [\d.]+:(\d+) (.*)", line.strip())):
            port, params = int(m.group(1)), m.group(2)
            if port in done:
                continue  # the shipped hosts after the first: replaced all at once
            done.add(port)
            line = "\n".join(f"{indent}server {address} {params}" for address in upstreams[port])
        out.append(line)
    return "\n".join(out) + "\n"


def _free_port() -> int:
    # nginx cannot report a port it picked: take one the kernel just gave out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self, binary: str, run_dir: Path, text: str):
        self.binary = binary
        self.run_dir = run_dir
        self.conf = run_dir / "nginx.conf"
        self.conf.write_text(text)
        self.proc: subprocess.Popen | None = None

    def command(self, *args: str) -> list[str]:
        return [self.binary, "-c", str(self.conf), "-p", str(self.run_dir), *args]

    def check(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)

    def start(self, port: int, timeout: float = 30) -> Nginx:
        with open(self.run_dir / "stderr.log", "wb") as stderr:
            self.proc = subprocess.Popen(self.command("-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + timeout
        while True:  # nginx says nothing when it listens: its port answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start:\n" + self.log()) from None
                time.sleep(0.05)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.run_dir.glob("*.log")))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish their requests
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _grpc_address(daemon: DaemonProcess) -> str:
    [address] = [e["address"] for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return address


class _GrpcAt:
    """What grpc_infer needs of a daemon (its gRPC address), pointing at the balancer instead."""

    def __init__(self, address: str):
        self.address = address

    def events(self, name: str) -> list[dict]:
        return [{"frontend": "grpc", "address": self.address}]


@pytest.fixture(scope="module")
def fleet(nginx_binary, tmp_path_factory):
    """Two daemons on one small model, and the shipped nginx in front of them."""
    models = tmp_path_factory.mktemp("models")
    make_models.build_add_sub(models / "add_sub" / "1" / "model.onnx")
    daemons = []
    try:
        for _ in range(2):
            daemons.append(DaemonProcess(models).start())
        run_dir = tmp_path_factory.mktemp("nginx")
        http_port, grpc_port = _free_port(), _free_port()
        text = render(SHIPPED.read_text(), run_dir, {SHIPPED_HTTP_PORT: http_port, SHIPPED_GRPC_PORT: grpc_port},
                      {SHIPPED_HTTP_PORT: [d.url.removeprefix("http://") for d in daemons],
                       SHIPPED_GRPC_PORT: [_grpc_address(d) for d in daemons]})
        nginx = Nginx(nginx_binary, run_dir, text)
        checked = nginx.check()
        assert checked.returncode == 0, checked.stderr
        nginx.start(http_port)
        try:
            yield daemons, nginx, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
        finally:
            nginx.stop()
    finally:
        for d in daemons:
            d.stop()


ROWS = np.arange(32, dtype=np.int32).reshape(2, 16)


def _body() -> dict:
    return {"inputs": [{"name": n, "shape": list(ROWS.shape), "datatype": "INT32", "data": ROWS.ravel().tolist()}
                       for n in ("INPUT0", "INPUT1")]}


def _infer(url: str) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/v2/models/add_sub/infer", data=json.dumps(_body()).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def _served(daemon: DaemonProcess) -> float:
    """Requests the daemon answered OK over HTTP, from its own /metrics."""
    total = 0.0
    for line in daemon.http_get("/metrics").decode().splitlines():
        if line.startswith("inferd_requests_total{") and 'code="OK"' in line and 'protocol="http"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_shipped_config_passes_nginx_t(nginx_binary, tmp_path):
    text = render(SHIPPED.read_text(), tmp_path, {SHIPPED_HTTP_PORT: _free_port(), SHIPPED_GRPC_PORT: _free_port()},
                  {SHIPPED_HTTP_PORT: ["127.0.0.1:9", "127.0.0.1:10"], SHIPPED_GRPC_PORT: ["127.0.0.1:11"]})
    # what was replaced is only this machine's places: every directive of the shipped file is still there
    shipped_keys = [line.split()[0] for line in SHIPPED.read_text().splitlines() if line.strip()]
    rendered_keys = [line.split()[0] for line in text.splitlines() if line.strip()]
    assert sorted(set(shipped_keys)) == sorted(set(rendered_keys))
    checked = Nginx(nginx_binary, tmp_path, text).check()
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_http_inference_through_nginx_reaches_both_hosts(fleet):
    daemons, _, url, _ = fleet
    before = [_served(d) for d in daemons]
    for _ in range(6):
        status, answer = _infer(url)
        assert status == 200
        outputs = {o["name"]: o["data"] for o in answer["outputs"]}
        assert outputs["OUTPUT0"] == (ROWS + ROWS).ravel().tolist()
        assert outputs["OUTPUT1"] == (ROWS - ROWS).ravel().tolist()
    after = [_served(d) for d in daemons]
    assert sum(after) - sum(before) == 6
    assert all(a > b for a, b in zip(after, before)), (before, after)  # round robin: both served


def test_a_body_over_inferds_limit_is_refused_by_nginx_and_both_hosts_serve_on(fleet):
    """client_max_body_size follows inferd's max_request_bytes (64 MiB): a bigger body is
    refused at the balancer, from its Content-Length, before a byte of it travels."""
    daemons, _, url, _ = fleet
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", "/v2/models/add_sub/infer")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(64 * 1024 * 1024 + 1))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert b"<center>nginx</center>" in response.read()  # nginx's own page: inferd's answers are JSON
    finally:
        connection.close()
    for daemon in daemons:
        assert daemon.post_json("/v2/models/add_sub/infer", _body())[0] == 200


def test_grpc_inference_through_nginx(fleet):
    _, _, _, grpc_address = fleet
    outputs = grpc_infer(_GrpcAt(grpc_address), "add_sub", {"INPUT0": ROWS, "INPUT1": ROWS})
    np.testing.assert_array_equal(outputs["OUTPUT0"], ROWS + ROWS)
    np.testing.assert_array_equal(outputs["OUTPUT1"], ROWS - ROWS)


def test_requests_go_on_when_a_host_is_killed(fleet):
    """Last in this module: it kills a daemon. The killed host's refused connections are
    failed attempts (passive check) and the requests go to the other host."""
    (killed, survivor), nginx, url, grpc_address = fleet
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(30)
    before = _served(survivor)
    statuses = [_infer(url)[0] for _ in range(10)]
    assert statuses == [200] * 10
    assert _served(survivor) - before == 10
    assert "Connection refused" in nginx.log()  # nginx did try the dead host, and went on
    outputs = grpc_infer(_GrpcAt(grpc_address), "add_sub", {"INPUT0": ROWS, "INPUT1": ROWS})
    np.testing.assert_array_equal(outputs["OUTPUT0"], ROWS + ROWS)
