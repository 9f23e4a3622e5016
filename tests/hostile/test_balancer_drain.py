"""Clients that misbehave while the daemon stops for a balancer: a gRPC client that ignores the
drain's GOAWAY and opens another stream gets UNAVAILABLE there (its call in flight is still
answered), a new gRPC or HTTP connection is refused once the drain starts, and a bad
ready_models on SIGHUP is refused while the daemon serves on, ready, with the old config."""

from __future__ import annotations

import http.client
import json
import signal
import socket

from daemon_process import DaemonProcess
from goaway_probe import goaway_probe, grpc_address, models
from waiting import eventually


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


async def test_a_client_ignoring_goaway_gets_unavailable_and_new_connections_are_refused(tmp_path):
    root = models(tmp_path / "models", "sleepy")
    with DaemonProcess(root, env={"INFERD_DEFAULTS_MIN_WORKERS": "1"}) as d:  # drain_delay_s = 0
        probe = goaway_probe(d, 1004.0, ignore_goaway=True)  # answered after 4 s
        try:
            assert probe.stdout.readline().strip() == "sent"
            d.proc.send_signal(signal.SIGTERM)
            await eventually(lambda: d.events("gRPC connections told to go away"), 30, "the GOAWAYs")
            refused = []
            for address in (grpc_address(d), d.url.removeprefix("http://")):
                try:
                    socket.create_connection(_address(address), timeout=10).close()
                except ConnectionRefusedError:
                    refused.append(address)
            frames = json.loads(probe.stdout.readline())
            code = d.wait(60)
        finally:
            if probe.poll() is None:
                probe.kill()
            probe.wait()
            probe.stdout.close()
    assert refused == [grpc_address(d), d.url.removeprefix("http://")]
    statuses = {f[1]: f[2]["grpc-status"] for f in frames if f[0] == "HEADERS" and "grpc-status" in f[2]}
    assert statuses == {1: "0", 3: "14"}, frames  # in flight: answered; after the GOAWAY: UNAVAILABLE
    goaways = [f[1:] for f in frames if f[0] == "GOAWAY"]
    assert goaways == [[2**31 - 1, 0], [3, 0]], frames  # graceful first; the final one names stream 3
    assert code == 0


def ready(conn: http.client.HTTPConnection) -> tuple[int, dict]:
    conn.request("GET", "/v2/health/ready")
    response = conn.getresponse()
    return response.status, json.loads(response.read())


async def test_a_bad_ready_models_on_sighup_is_refused_and_the_daemon_stays_ready(tmp_path):
    root = models(tmp_path / "models", "sleepy")
    config = tmp_path / "inferd.toml"
    config.write_text('[server]\nready_models = ["sleepy"]\n')
    with DaemonProcess(root, config=config) as d:
        host, port = d.address
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            assert ready(conn) == (200, {"ready": True})
            config.write_text('[server]\nready_models = "sleepy"\n')
            d.proc.send_signal(signal.SIGHUP)
            [refused] = await eventually(lambda: d.events("reload refused: invalid configuration; keeping the running one"),
                                         30, "the refusal")
            assert "server.ready_models: expected an array of str" in refused["error"]
            await eventually(lambda: d.events("reloaded"), 30, "the reload with the old config")
            assert ready(conn) == (200, {"ready": True})
        finally:
            conn.close()
