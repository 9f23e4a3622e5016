"""The hot models directory, measured against a running daemon:

1. landing -> first answer: a new model file is moved into the watched directory; how long until
   the daemon answers a request for it (the settle time, the worker start and load, the answer);
2. replace under load: `--clients` closed-loop clients keep asking while the model's file is
   replaced `--replacements` times; failed requests are counted, and the time from each file
   landing until every client gets the new version's answers.

    .venv/bin/python bench/hot_reload.py                      # settle_ms as the daemon's default (500)
    .venv/bin/python bench/hot_reload.py --settle-ms 100 --trials 10 --replacements 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
from make_models import build_add_sub  # noqa: E402
from server import Server  # noqa: E402

from inferd.client import AsyncClient, InferdClientError  # noqa: E402

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)


def place(path: pathlib.Path, offset: int) -> float:
    """Write an add_sub model (OUTPUT0 = A + B + offset) beside, then rename it into place;
    returns the instant it landed."""
    part = path.with_name(path.name + ".part")
    build_add_sub(part, offset=offset)
    os.replace(part, path)
    return time.monotonic()


def offset_of(outputs) -> int:
    return int(outputs["OUTPUT0"][0, 0] - (A + B)[0, 0])


async def first_answer(client: AsyncClient, model: str, offset: int, landed: float, timeout: float = 60) -> float:
    while time.monotonic() - landed < timeout:
        try:
            if offset_of(await client.infer(model, {"INPUT0": A, "INPUT1": B})) == offset:
                return time.monotonic() - landed
        except InferdClientError:
            pass
        await asyncio.sleep(0.002)
    raise RuntimeError(f"{model} did not answer with offset {offset} within {timeout} s")


async def landing(socket: str, models: pathlib.Path, trials: int) -> list[float]:
    times = []
    async with AsyncClient(socket=socket) as client:
        for i in range(trials):
            name = f"drop{i}"
            times.append(await first_answer(client, name, i, place(models / f"{name}.onnx", i)))
    return times


async def replace_under_load(socket: str, path: pathlib.Path, clients: int, replacements: int) -> dict:
    stop = asyncio.Event()
    latest = [0] * clients
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []

    async def keep_asking(i: int) -> None:
        async with AsyncClient(socket=socket) as client:
            while not stop.is_set():
                try:
                    latest[i] = offset_of(await client.infer(path.stem, {"INPUT0": A, "INPUT1": B}))
                    counts["ok"] += 1
                except InferdClientError as e:
                    counts["failed"] += 1
                    errors.append(str(e))

    tasks = [asyncio.create_task(keep_asking(i)) for i in range(clients)]
    switch_times = []
    try:
        for k in range(1, replacements + 1):
            landed = place(path, k)
            while not all(v == k for v in latest):
                if time.monotonic() - landed > 60:
                    raise RuntimeError(f"replacement {k} not served within 60 s")
                await asyncio.sleep(0.002)
            switch_times.append(time.monotonic() - landed)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return {**counts, "switch_s": switch_times, "errors": errors[:5]}


def _summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"median {statistics.median(ms):.0f} ms, min {min(ms):.0f}, max {max(ms):.0f} (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle-ms", type=int, default=500, help="models.settle_ms for the daemon")
    parser.add_argument("--trials", type=int, default=5, help="new models dropped in, one after another")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--replacements", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="inferd-hot-") as tmp:
        tmp = pathlib.Path(tmp)
        models = tmp / "models"
        models.mkdir()
        served = models / "addsub.onnx"
        place(served, 0)
        socket = str(tmp / "inferd.sock")
        cmd = [sys.executable, "-m", "inferd.daemon", "serve", "--models", str(models), "--http", "127.0.0.1:0",
               "--grpc", "", "--socket", socket, "--log-format", "json"]
        os.environ["INFERD_MODELS_SETTLE_MS"] = str(args.settle_ms)
        server = Server(cmd, tmp, "inferd", frontends=("http", "socket"))
        try:
            drops = asyncio.run(landing(socket, models, args.trials))
            load = asyncio.run(replace_under_load(socket, served, args.clients, args.replacements))
        finally:
            server.stop()
    print(f"settle_ms {args.settle_ms}, {os.cpu_count()} CPUs")
    print(f"new file landing -> first answer: {_summary(drops)}")
    print(f"replace under load ({args.clients} clients, {args.replacements} replacements): "
          f"{load['ok']} requests answered, {load['failed']} failed")
    print(f"  landing -> every client on the new version: {_summary(load['switch_s'])}")
    if load["errors"]:
        print("  first errors:", *load["errors"], sep="\n    ")
    if load["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
