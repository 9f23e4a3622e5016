"""Cold starts of a model scaled to zero, measured against a daemon this script starts:
the time from a request to its answer when no worker is running, split into the worker's
spawn (fork from the forkserver) and load (model load + warm-up) as the daemon logs them, and
raw onnxruntime's own InferenceSession creation on the same file for scale.

    .venv/bin/python bench/cold_start.py                  # the MLP, 5 cold starts
    .venv/bin/python bench/cold_start.py --trials 10
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
from make_models import build_mlp  # noqa: E402
from server import Server  # noqa: E402

from inferd.client import Client  # noqa: E402

IDLE_S = 0.3



def _ms(values: list[float]) -> str:
    v = [x * 1000 for x in values]
    return f"median {statistics.median(v):.0f} ms (min {min(v):.0f}, max {max(v):.0f}, n={len(v)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    x = np.ones((1, 512), np.float32)
    with tempfile.TemporaryDirectory(prefix="inferd-cold-") as tmp:
        tmp = pathlib.Path(tmp)
        path = build_mlp(tmp / "models" / "mlp" / "1" / "model.onnx")
        size_mb = path.stat().st_size / 1e6
        (tmp / "models" / "mlp" / "config.toml").write_text(f"idle_timeout_s = {IDLE_S}\n")

        session_s = []
        for _ in range(args.trials):
            started = time.monotonic()
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
            session_s.append(time.monotonic() - started)

        socket = str(tmp / "inferd.sock")
        cmd = [sys.executable, "-m", "inferd.daemon", "serve", "--models", str(tmp / "models"),
               "--http", "127.0.0.1:0", "--grpc", "", "--socket", socket, "--log-format", "json"]
        server = Server(cmd, tmp, "inferd", frontends=("http", "socket"))
        first_answer = []
        try:
            with Client(socket=socket) as client:
                for _ in range(args.trials):
                    time.sleep(IDLE_S * 4)  # idle: the worker stops, the model sits at zero
                    started = time.monotonic()
                    client.infer("mlp", {"input": x})
                    first_answer.append(time.monotonic() - started)
            cold = [e for e in server.events("scaled up") if e["reason"].startswith("cold start")]
        finally:
            server.stop()
    print(f"MLP ({size_mb:.1f} MB), {len(cold)} cold starts")
    print(f"  request -> answer, no worker running: {_ms(first_answer)}")
    print(f"    spawn (fork from the forkserver):   {_ms([e['spawn_s'] for e in cold])}")
    print(f"    load (session + warm-up, in worker): {_ms([e['load_s'] for e in cold])}")
    print(f"  raw onnxruntime InferenceSession + first run in-process: {_ms(session_s)}")
    if len(cold) != args.trials:
        sys.exit(f"expected {args.trials} cold starts, saw {len(cold)}")


if __name__ == "__main__":
    main()
