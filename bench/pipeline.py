"""The text pipeline (tokenize.py -> bag_classifier.pt -> label.py) served as one pipeline
model, against a client calling its three steps one by one, and the same three steps run raw
in-process, all in one run on this machine.

    .venv/bin/python bench/pipeline.py                       # unix and http, concurrency 1 and 16, 3 s each
    .venv/bin/python bench/pipeline.py --concurrency 1,16,64 --duration 5

One request = one text row. Closed loop: each of `c` clients sends its next request when the
last one answered. `inferd.client.AsyncClient` over the Unix socket and over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import make_models  # noqa: E402
from server import Server  # noqa: E402

from inferd.client import AsyncClient  # noqa: E402

TEXT = np.array([b"Stocks fell as the market opened on rates news"], dtype=object)


def _python_model(path: pathlib.Path, parameters: dict):
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    model = namespace["Model"]()
    if hasattr(model, "load"):
        model.load(path.parent, {"parameters": parameters})
    return model


def raw(duration: float) -> tuple[float, float]:
    """The three steps in-process, batch 1: (calls/s, p50 ms)."""
    tokenize = _python_model(make_models.PYTHON_MODELS / "tokenize.py", {})
    label = _python_model(make_models.PYTHON_MODELS / "label.py", {"labels": list(make_models.TOPICS), "min_score": 0.4})
    classifier = make_models.bag_classifier_module()
    times = []
    end = time.perf_counter() + duration
    with torch.inference_mode():
        while time.perf_counter() < end:
            started = time.perf_counter()
            tokens = tokenize.infer({"text": TEXT})["tokens"]
            probabilities = classifier(torch.from_numpy(tokens)).numpy()
            label.infer({"probabilities": probabilities})
            times.append(time.perf_counter() - started)
    return len(times) / duration, statistics.median(times) * 1000


async def _one_by_one(client: AsyncClient) -> bytes:
    tokens = (await client.infer("tokenize", {"text": TEXT}))["tokens"]
    probabilities = (await client.infer("bag_classifier", {"tokens": tokens}))["probabilities"]
    return (await client.infer("label", {"probabilities": probabilities}))["label"][0]


async def _piped(client: AsyncClient) -> bytes:
    return (await client.infer("text_classifier", {"text": TEXT}))["label"][0]


async def load(where: dict, call, concurrency: int, duration: float, warmup: float) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) over `duration` s after `warmup` s; one connection per client.
    The clock starts once every client has had its first answer (scale-to-zero models start
    their workers on the first request: cold starts are bench/cold_start.py's subject)."""
    times: list[float] = []
    answered, go = asyncio.Barrier(concurrency + 1), asyncio.Event()
    window: list[float] = []  # [record from, end]: set once every client is answered

    async def client_loop() -> None:
        async with AsyncClient(**where) as client:
            assert await call(client) == b"finance"
            await answered.wait()
            await go.wait()
            record_from, end = window
            while (now := time.perf_counter()) < end:
                await call(client)
                if now >= record_from:
                    times.append(time.perf_counter() - now)

    clients = [asyncio.create_task(client_loop()) for _ in range(concurrency)]
    await answered.wait()
    start = time.perf_counter()
    window[:] = [start + warmup, start + warmup + duration]
    go.set()
    await asyncio.gather(*clients)
    times.sort()
    return len(times) / duration, times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--transports", default="unix,http")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    raw_before = raw(min(args.duration, 2.0))
    rows = []
    with tempfile.TemporaryDirectory(prefix="inferd-pipeline-") as tmp:
        tmp = pathlib.Path(tmp)
        make_models.make_text_examples(tmp / "models")
        socket = str(tmp / "inferd.sock")
        cmd = [sys.executable, "-m", "inferd.daemon", "serve", "--models", str(tmp / "models"),
               "--http", "127.0.0.1:0", "--grpc", "", "--socket", socket, "--log-format", "json"]
        server = Server(cmd, tmp, "inferd", frontends=("http", "socket"))
        try:
            host, port = server.addresses["http"]
            transports = {"unix": {"socket": socket}, "http": {"url": f"http://{host}:{port}"}}
            for transport in args.transports.split(","):
                for c in concurrencies:
                    for mode, call in (("pipeline", _piped), ("step by step", _one_by_one)):
                        rate, p50, p99 = asyncio.run(load(transports[transport], call, c, args.duration, args.warmup))
                        rows.append((transport, mode, c, rate, p50, p99))
        finally:
            server.stop()
    raw_after = raw(min(args.duration, 2.0))
    raw_rate, raw_p50 = (raw_before[0] + raw_after[0]) / 2, (raw_before[1] + raw_after[1]) / 2
    print(f"raw in-process (tokenize + TorchScript + label, batch 1): {raw_rate:,.0f} calls/s, p50 {raw_p50:.3f} ms "
          f"(before {raw_before[0]:,.0f}, after {raw_after[0]:,.0f})")
    print(f"{'transport':9} {'mode':13} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'x raw':>6} {'x steps':>8}")
    by_key = {(t, m, c): r for t, m, c, r, _, _ in rows}
    for transport, mode, c, rate, p50, p99 in rows:
        versus = f"{rate / by_key[(transport, 'step by step', c)]:.2f}" if mode == "pipeline" else ""
        print(f"{transport:9} {mode:13} {c:>4} {rate:>8,.0f} {p50:>8.3f} {p99:>8.3f} {rate / raw_rate:>6.2f} {versus:>8}")


if __name__ == "__main__":
    main()
