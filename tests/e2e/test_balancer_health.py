"""What a load balancer sees of a stopping daemon, through real clients: on SIGTERM readiness
fails at once (HTTP 503, gRPC health NOT_SERVING, every model not ready) while inference is
served on for server.drain_delay_s, every HTTP answer saying Connection: close; then the drain,
where each gRPC connection gets a graceful GOAWAY (its call in flight still answered) and the
daemon exits 0. SIGINT skips the delay. server.ready_models holds readiness back until the
models named have a READY version."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from datetime import datetime

import grpc
import pytest
from daemon_process import DaemonProcess
from goaway_probe import goaway_probe, grpc_address, models
from grpc_health.v1 import health_pb2, health_pb2_grpc
from waiting import eventually

DELAY_S = 3.0
SLOW = 1008.0  # the model answers after 8 s (goaway_probe.MODEL): longer than DELAY_S

FAST = {"INFERD_MODELS_SETTLE_MS": "100", "INFERD_DEFAULTS_MIN_WORKERS": "1"}

# tritonclient's gRPC client in a subprocess (never in the pytest process): connected first, it
# calls when told, so that its calls fall within the delay.
GRPC_CLIENT = '''
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(sys.argv[1])
assert client.is_server_ready()
print("connected", flush=True)
sys.stdin.readline()
tensor = grpcclient.InferInput("x", [1, 1], "FP32")
tensor.set_data_from_numpy(np.full((1, 1), 3.0, np.float32))
y = client.infer("echo", [tensor]).as_numpy("y")
print(json.dumps({"y": y.tolist(), "server_ready": client.is_server_ready(),
                  "model_ready": client.is_model_ready("echo")}), flush=True)
'''


def health(channel, service: str = "") -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def get(conn: http.client.HTTPConnection, path: str, body: dict | None = None) -> tuple[int, str, dict]:
    """(status, Connection header, JSON body) of a GET, or a POST of `body`, on `conn`."""
    if body is None:
        conn.request("GET", path)
    else:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.getheader("Connection", ""), json.loads(response.read())


INFER = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [2.0]}]}


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def watched(watch) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(next(watch).status)


def within_the_delay(d: DaemonProcess, kept: http.client.HTTPConnection, channel, watch) -> dict:
    """What clients see right after SIGTERM: health fails everywhere, inference is served,
    connections close."""
    host, port = d.address
    fresh, other = (http.client.HTTPConnection(host, port, timeout=60) for _ in range(2))
    try:
        return {"ready": get(kept, "/v2/health/ready")[:2], "model ready": get(fresh, "/v2/models/echo/ready")[:2],
                "infer": get(other, "/v2/models/echo/infer", INFER), "grpc health": health(channel),
                "grpc model health": health(channel, "echo"), "grpc watch": watched(watch)}
    finally:
        fresh.close()
        other.close()


def assert_goaway_then_answer(frames: list) -> None:
    """On the wire: a graceful GOAWAY, then the call in flight answered OK, then the final GOAWAY."""
    kinds = [f[0] for f in frames]
    assert frames[kinds.index("GOAWAY")][1:] == [2**31 - 1, 0], frames
    trailers = [f for f in frames if f[0] == "HEADERS" and "grpc-status" in f[2]]
    assert [t[1:] for t in trailers] == [[1, {"grpc-status": "0"}]], frames
    assert kinds.index("GOAWAY") < frames.index(trailers[0]) and frames[-1] == ["GOAWAY", 1, 0], frames


async def test_sigterm_not_ready_serving_through_the_delay_then_goaway_drain_and_exit(tmp_path):
    root = models(tmp_path / "models", "echo", "sleepy")
    with DaemonProcess(root, env={**FAST, "INFERD_SERVER_DRAIN_DELAY_S": str(DELAY_S)}) as d, \
            grpc.insecure_channel(grpc_address(d)) as channel:
        kept = http.client.HTTPConnection(*d.address, timeout=60)  # a balancer's keep-alive connection
        assert get(kept, "/v2/health/ready")[:2] == (200, "")
        assert get(kept, "/v2/models/echo/infer", INFER)[0] == 200  # its worker started before the clock runs
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert health(channel) == watched(watch) == "SERVING"
        client = subprocess.Popen([sys.executable, "-c", GRPC_CLIENT, grpc_address(d)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        probe = goaway_probe(d, SLOW)
        try:
            assert client.stdout.readline().strip() == "connected"
            assert probe.stdout.readline().strip() == "sent"  # a call in flight across the drain's start
            d.proc.send_signal(signal.SIGTERM)
            [leaving] = await eventually(lambda: d.events("not ready: draining after the delay"), 30, "not ready")
            client.stdin.write("go\n")
            client.stdin.flush()
            during = within_the_delay(d, kept, channel, watch)
            grpc_answer = json.loads(client.stdout.readline())
            code = d.wait(60)
            frames = json.loads(probe.stdout.readline())
            with pytest.raises(grpc.RpcError) as watch_ended:
                next(watch)
        finally:
            for p in (client, probe):
                p.kill() if p.poll() is None else None
                p.wait()
                p.stdin.close() if p.stdin else None
                p.stdout.close()
            kept.close()
    assert leaving["drain_delay_s"] == DELAY_S
    assert during["ready"] == (503, "close") and during["model ready"] == (503, "close")
    assert during["infer"][:2] == (200, "close") and during["infer"][2]["outputs"][0]["data"] == [2.0]
    assert during["grpc health"] == during["grpc model health"] == during["grpc watch"] == "NOT_SERVING"
    assert watch_ended.value.code() is grpc.StatusCode.UNAVAILABLE  # a Watch ends when the drain starts
    assert grpc_answer == {"y": [[3.0]], "server_ready": False, "model_ready": False}
    assert code == 0
    assert_goaway_then_answer(frames)
    [told] = d.events("gRPC connections told to go away")
    assert told["connections"] >= 2  # the probe's and grpcio's (tritonclient's may have gone)
    [draining], [stopped] = d.events("draining"), d.events("stopped")
    assert stopped["drained"] is True
    waited = stamp(draining) - stamp(leaving)
    print(f"not ready -> draining: {waited:.3f} s (drain_delay_s = {DELAY_S})")
    assert waited >= DELAY_S - 0.01  # the delay was served in full (a lower bound only)


def test_sigint_skips_the_delay(tmp_path):
    root = models(tmp_path / "models", "echo")
    with DaemonProcess(root, env={"INFERD_SERVER_DRAIN_DELAY_S": "600"}) as d:
        d.proc.send_signal(signal.SIGINT)
        assert d.wait(60) == 0  # not 600 s
        [leaving] = d.events("not ready: draining after the delay")
        assert leaving["drain_delay_s"] == 0
        assert d.events("stopped")[0]["drained"] is True


async def test_sigint_during_the_delay_cuts_it_short(tmp_path):
    root = models(tmp_path / "models", "echo")
    with DaemonProcess(root, env={"INFERD_SERVER_DRAIN_DELAY_S": "600"}) as d:
        d.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: d.events("not ready: draining after the delay"), 30, "not ready")
        host, port = d.address
        conn = http.client.HTTPConnection(host, port, timeout=60)
        assert get(conn, "/v2/health/ready")[:2] == (503, "close")
        conn.close()
        d.proc.send_signal(signal.SIGINT)
        assert d.wait(60) == 0
        assert d.events("delay cut short by SIGINT") and d.events("stopped")[0]["drained"] is True


async def test_ready_models_hold_readiness_until_each_is_ready(tmp_path):
    root = models(tmp_path / "models", "echo")
    config = tmp_path / "inferd.toml"
    config.write_text('[server]\nready_models = ["echo", "later"]\n')
    with DaemonProcess(root, config=config, env=FAST) as d, grpc.insecure_channel(grpc_address(d)) as channel:
        host, port = d.address
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            # Started (READY=1 for systemd), serving echo, but not ready for a balancer: "later" is absent.
            assert get(conn, "/v2/health/ready") == (503, "", {"ready": False})
            assert health(channel) == "NOT_SERVING" and health(channel, "echo") == "SERVING"
            assert get(conn, "/v2/models/echo/ready")[0] == 200
            assert get(conn, "/v2/models/echo/infer", INFER)[0] == 200
            models(tmp_path / "staging", "later")
            os.rename(tmp_path / "staging" / "later", root / "later")
            await eventually(lambda: get(conn, "/v2/health/ready")[0] == 200, 60, "ready once later is READY")
            assert health(channel) == "SERVING"
            (root / "later" / "1" / "model.py").unlink()
            (root / "later" / "1").rmdir()
            await eventually(lambda: get(conn, "/v2/health/ready")[0] == 503, 60, "not ready once later is gone")
            assert health(channel) == "NOT_SERVING"
            config.write_text('[server]\nready_models = ["echo"]\n')  # applies on reload
            d.proc.send_signal(signal.SIGHUP)
            await eventually(lambda: d.events("reloaded"), 60, "the reload")
            assert get(conn, "/v2/health/ready")[0] == 200 and health(channel) == "SERVING"
            assert not d.events("config changes need a restart to apply")
        finally:
            conn.close()


@pytest.mark.parametrize("setting, reason", [
    ("drain_delay_s = -1", "server.drain_delay_s: must be between 0 and 600, got -1.0"),
    ("drain_delay_s = 601", "server.drain_delay_s: must be between 0 and 600, got 601.0"),
    ('drain_delay_s = "5"', "server.drain_delay_s: expected float, got str '5'"),
    ('ready_models = "echo"', "server.ready_models: expected an array of str, got str 'echo'"),
    ("ready_models = [1]", "server.ready_models[0]: expected str, got int 1"),
    ('ready_models = ["../etc"]', "server.ready_models: expected model names"),
    ('ready_models = ["echo", "echo"]', "server.ready_models: names a model twice"),
])
def test_bad_settings_are_refused_at_start(tmp_path, setting, reason):
    config = tmp_path / "inferd.toml"
    config.write_text(f"[server]\n{setting}\n")
    run = subprocess.run([sys.executable, "-m", "inferd.daemon", "serve", "--config", str(config), "--models",
                          str(tmp_path), "--http", "127.0.0.1:0", "--grpc", "", "--socket", ""],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and reason in run.stderr, run.stderr


SLOW_LOAD = '''
import time


class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]

    def load(self, model_dir, config):
        time.sleep(4)

    def infer(self, inputs):
        return {"y": inputs["x"]}
'''


def test_sigterm_while_starting_skips_the_delay(tmp_path):
    """Never ready yet: no balancer sends it anything, so it has none to wait for."""
    (tmp_path / "slow_load" / "1").mkdir(parents=True)
    (tmp_path / "slow_load" / "1" / "model.py").write_text(SLOW_LOAD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    env["INFERD_SERVER_DRAIN_DELAY_S"] = "600"
    daemon = subprocess.Popen([sys.executable, "-m", "inferd.daemon", "serve", "--models", str(tmp_path), "--http",
                               "127.0.0.1:0", "--grpc", "", "--socket", "", "--log-format", "json"],
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in daemon.stderr:
            if '"event":"listening"' in line:  # started: loading its models, not ready
                break
        daemon.send_signal(signal.SIGTERM)
        rest = daemon.stderr.read()
        assert daemon.wait(60) == 0  # the load's 4 s, not 600
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        daemon.stderr.close()
    events = {e.get("event"): e for e in (json.loads(line) for line in rest.splitlines() if line.startswith("{"))}
    assert "ready" in events and events["not ready: draining after the delay"]["drain_delay_s"] == 0


# grpclib's client (python-h2) in a subprocess: one ModelInfer to "sleepy", answered after the
# drain has started.
GRPCLIB_CALL = '''
import asyncio, json, sys
import numpy as np
from grpclib.client import Channel
from grpclib.const import Cardinality
from tritonclient.grpc import service_pb2 as pb


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    request = pb.ModelInferRequest(model_name="sleepy")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.full((1, 1), float(sys.argv[2]), np.float32).tobytes())
    async with Channel(host, int(port)) as channel, channel.request(
            "/inference.GRPCInferenceService/ModelInfer", Cardinality.UNARY_UNARY, pb.ModelInferRequest,
            pb.ModelInferResponse) as stream:
        await stream.send_message(request, end=True)
        print("sent", flush=True)
        try:
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()
            print(json.dumps({"y": np.frombuffer(reply.raw_output_contents[0], np.float32).tolist()}), flush=True)
        except Exception as e:
            print(json.dumps({"error": repr(e)}), flush=True)

asyncio.run(main())
'''


def test_a_grpclib_clients_call_in_flight_is_answered_across_the_drain(tmp_path):
    """python-h2 (under grpclib's client) ends a connection at any GOAWAY and refuses the answers
    after it: its connections are told none, and their calls are answered."""
    root = models(tmp_path / "models", "sleepy")
    with DaemonProcess(root, env={**FAST, "INFERD_SERVER_DRAIN_DELAY_S": "1"}) as d:
        client = subprocess.Popen([sys.executable, "-c", GRPCLIB_CALL, grpc_address(d), "1003"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert client.stdout.readline().strip() == "sent"
            d.proc.send_signal(signal.SIGTERM)
            answer = json.loads(client.stdout.readline())
            assert d.wait(60) == 0
        finally:
            if client.poll() is None:
                client.kill()
            client.wait()
            client.stdout.close()
    assert answer == {"y": [1003.0]}
    assert d.events("gRPC connections told to go away")[0]["connections"] == 0
