"""perf_analyzer with and without `--shared-memory system` on identity models of 1 MiB and 16 MiB
(FP32 [262144] and [4194304] per request), over HTTP and gRPC, beside the Unix socket (inferd's
Python client in a closed loop, one request in flight).

    .venv/bin/python bench/shared_memory.py --perf-analyzer /work/pa-venv/bin/perf_analyzer

Each row is one short perf_analyzer run at concurrency 1 (`-p` ms windows, at most `-r` of them);
the Unix rows run `--unix-s` seconds. Numbers are req/s and latencies in ms.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper
from server import Server

SIZES = {"identity_1mb": 262144, "identity_16mb": 4194304}


def identity(path: pathlib.Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", n]) for name in ("INPUT0", "OUTPUT0")]
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "identity", [io[0]], [io[1]])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def perf_analyzer(binary: str, model: str, protocol: str, url: str, shm: bool, n: int, tmp: pathlib.Path,
                  window_ms: int, trials: int, stability: int) -> dict:
    out = tmp / f"{model}-{protocol}-{shm}.csv"
    cmd = [binary, "-m", model, "-i", protocol, "-u", url, "--concurrency-range", "1", "-p", str(window_ms),
           "-r", str(trials), "-s", str(stability), "--input-data", "zero", "-f", str(out)]
    if shm:
        cmd += ["--shared-memory", "system", "--output-shared-memory-size", str(4 * n)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if run.returncode != 0 and not out.exists():  # (e.g. no stable measurement on a busy machine)
        why = (run.stdout + run.stderr).strip().splitlines()[-1:] or ["?"]
        return {"cmd": " ".join(cmd), "failed": why[0][:100]}
    [row] = list(csv.DictReader(out.open()))
    return {"cmd": " ".join(cmd), "req_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1000,
            "p99_ms": float(row["p99 latency"]) / 1000}


def unix(path: str, model: str, n: int, seconds: float) -> dict:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from inferd.client import Client

    x = np.zeros((1, n), np.float32)
    latencies = []
    with Client(socket=path) as client:
        client.infer(model, {"INPUT0": x})
        end = time.perf_counter() + seconds
        while (now := time.perf_counter()) < end:
            client.infer(model, {"INPUT0": x})
            latencies.append(time.perf_counter() - now)
    latencies.sort()
    return {"cmd": f"inferd.client.Client(socket=...).infer in a loop, {seconds:g} s",
            "req_s": len(latencies) / sum(latencies), "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", default="perf_analyzer")
    parser.add_argument("-p", type=int, default=2000, help="perf_analyzer's measurement window, ms")
    parser.add_argument("-r", type=int, default=4, help="perf_analyzer's most windows")
    parser.add_argument("-s", type=int, default=50, help="perf_analyzer's stability threshold, %% (a busy machine)")
    parser.add_argument("--unix-s", type=float, default=5.0)
    parser.add_argument("--models", default=",".join(SIZES), help="which of " + ", ".join(SIZES))
    parser.add_argument("--paths", default="http,http+shm,grpc,grpc+shm,unix", help="which rows, of the default's")
    args = parser.parse_args()
    models, paths = args.models.split(","), args.paths.split(",")
    with tempfile.TemporaryDirectory(prefix="inferd-shm-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        for model, n in SIZES.items():
            identity(tmp / "models" / model / "1" / "model.onnx", n)
            (tmp / "models" / model / "config.toml").write_text("max_batch_size = 1\n")
        cmd = [sys.executable, "-m", "inferd.daemon", "serve", "--models", str(tmp / "models"), "--http", "127.0.0.1:0",
               "--grpc", "127.0.0.1:0", "--socket", str(tmp / "inferd.sock"), "--log-format", "json"]
        server = Server(cmd, tmp, "daemon", ("http", "grpc", "socket"))
        try:
            rows = []
            for model in models:
                n = SIZES[model]
                for protocol in ("http", "grpc"):
                    host, port = server.addresses[protocol]
                    for shm in (False, True):
                        if protocol + ("+shm" if shm else "") not in paths:
                            continue
                        result = perf_analyzer(args.perf_analyzer, model, protocol, f"{host}:{port}", shm, n, tmp, args.p, args.r, args.s)
                        rows.append((model, protocol + (" + system shm" if shm else ""), result))
                if "unix" in paths:
                    rows.append((model, "unix socket", unix(server.addresses["socket"], model, n, args.unix_s)))
        finally:
            server.stop()
    print(f"{'model':<15} {'how':<20} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for model, how, r in rows:
        if "failed" in r:
            print(f"{model:<15} {how:<20} failed: {r['failed']}")
        else:
            print(f"{model:<15} {how:<20} {r['req_s']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
    print("\ncommands:")
    for row in rows:
        print(f"  {row[2]['cmd']}")


if __name__ == "__main__":
    main()
