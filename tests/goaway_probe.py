"""A gRPC call in flight across the drain's start, seen on the wire: `goaway_probe(daemon, x)`
starts a subprocess that sends a ModelInfer to model "sleepy" (its input x; the models that
`models()` writes answer x >= 1000 after x - 1000 seconds) with h2 on a raw socket, prints
"sent", then reads every frame the server sends with hyperframe (h2's own state machine refuses
frames after a GOAWAY) until the connection ends, and prints them as one JSON line:
["GOAWAY", last_stream_id, error_code], ["HEADERS", stream, {headers}], ["DATA", stream, bytes],
["RST_STREAM", stream, error_code]. With `ignore_goaway`, it opens stream 3 after the first
GOAWAY, as a client that ignores it would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODEL = '''
import time


class Model:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]

    def load(self, model_dir, config):
        pass

    def infer(self, inputs):
        x = inputs["x"]
        if 1000 <= x.max() < 1060:
            time.sleep(float(x.max()) - 1000)
        return {"y": x}
'''

PROBE = '''
import json, socket, sys
import h2.config, h2.connection, hpack
import numpy as np
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame
sys.path.insert(0, sys.argv[3])
from grpc_raw import infer_message

h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
h2c.initiate_connection()
HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", "/inference.GRPCInferenceService/ModelInfer"),
           (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")]


def call(stream, value):
    h2c.send_headers(stream, HEADERS)
    x = np.full((1, 1), value, np.float32).tobytes()
    h2c.send_data(stream, infer_message("sleepy", [("x", "FP32", [1, 1], x)]), end_stream=True)
    sock.sendall(h2c.data_to_send())


host, port = sys.argv[1].rsplit(":", 1)
sock = socket.create_connection((host, int(port)), timeout=120)
call(1, float(sys.argv[2]))
print("sent", flush=True)
buffer, frames, decoder = b"", [], hpack.Decoder()
while data := sock.recv(65536):
    buffer += data
    while len(buffer) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
        if len(buffer) < 9 + length:
            break
        frame.parse_body(memoryview(buffer[9:9 + length]))
        buffer = buffer[9 + length:]
        if isinstance(frame, GoAwayFrame):
            frames.append(["GOAWAY", frame.last_stream_id, frame.error_code])
            if sys.argv[4] == "ignore" and len([f for f in frames if f[0] == "GOAWAY"]) == 1:
                call(3, 1.0)
        elif isinstance(frame, HeadersFrame):
            frames.append(["HEADERS", frame.stream_id, dict(decoder.decode(frame.data))])
        elif isinstance(frame, DataFrame) and frame.data:
            frames.append(["DATA", frame.stream_id, len(frame.data)])
        elif isinstance(frame, RstStreamFrame):
            frames.append(["RST_STREAM", frame.stream_id, frame.error_code])
sock.close()
print(json.dumps(frames), flush=True)
'''


def models(root: Path, *names: str) -> Path:
    """Python models `names` in `root` (each MODEL: y = x, slow for x >= 1000)."""
    for name in names:
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(MODEL)
        (root / name / "config.toml").write_text("max_batch_size = 8\nmax_queue_delay_ms = 0\n")
    return root


def grpc_address(daemon) -> str:
    [address] = [e["address"] for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return address


def goaway_probe(daemon, x: float, ignore_goaway: bool = False) -> subprocess.Popen:
    """The probe, started (its stdout a text pipe: "sent", then the frames' JSON line)."""
    return subprocess.Popen([sys.executable, "-c", PROBE, grpc_address(daemon), str(x),
                             str(Path(__file__).resolve().parent), "ignore" if ignore_goaway else "heed"],
                            stdout=subprocess.PIPE, text=True)
