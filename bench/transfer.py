"""Moving batch tensors between the daemon and a worker: shared memory against the socket.

Drives the scheduler in-process (a ModelQueue over a WorkerPool with one real forked worker)
on an Identity model, one request at a time, for a few tensor sizes, with `shared_memory` on
and off, beside raw in-process onnxruntime on the same model and input.

    .venv/bin/python bench/transfer.py
"""

from __future__ import annotations

import asyncio
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from inferd.backends import backend_path
from inferd.config.model import ModelSettings
from inferd.daemon.requests import InferRequest
from inferd.scheduler.pool import Scaling, WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.tickets import FixedLimits
from inferd.scheduler.worker import WorkerSpec

SIZES = [16 << 10, 1 << 20, 16 << 20]  # bytes per request, in and out


def identity(path: pathlib.Path) -> pathlib.Path:
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "n"]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [io[0]], [io[1]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def timed(fn, seconds: float) -> list[float]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


async def through_scheduler(path: pathlib.Path, shared_memory: bool, x: np.ndarray, seconds: float) -> list[float]:
    settings = ModelSettings(min_workers=1, max_workers=1, shared_memory=shared_memory, max_batch_size=0)
    wakeup = asyncio.Event()
    pool = WorkerPool(WorkerSpec.of("identity", "1", path, backend_path("onnx"), settings), Scaling.from_settings(settings),
                      on_change=wakeup.set)
    await pool.start()
    queue = ModelQueue(pool, FixedLimits(0, 16), output_names=["y"], max_delay_s=0, wakeup=wakeup)
    queue.start()
    try:
        for _ in range(3):
            await queue.submit(InferRequest({"x": x}), 1, ())
        out, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            result = await queue.submit(InferRequest({"x": x}), 1, ())
            out.append(time.perf_counter() - started)
        assert np.array_equal(result["y"], x)
        return out
    finally:
        await queue.drain()
        await pool.stop()


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    with tempfile.TemporaryDirectory() as tmp:
        path = identity(pathlib.Path(tmp) / "identity.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        print(f"{'tensor':>8} {'raw ms':>8} {'socket ms':>10} {'shm ms':>8} {'shm gain':>9}   (p50 of a round trip, one at a time)")
        for size in SIZES:
            x = np.random.default_rng(0).standard_normal((1, size // 4)).astype(np.float32)
            raw = statistics.median(timed(lambda x=x: session.run(["y"], {"x": x}), seconds))
            sock = statistics.median(asyncio.run(through_scheduler(path, False, x, seconds)))
            shm = statistics.median(asyncio.run(through_scheduler(path, True, x, seconds)))
            label = f"{size >> 10} KB" if size < 1 << 20 else f"{size >> 20} MB"
            print(f"{label:>8} {raw * 1e3:8.3f} {sock * 1e3:10.3f} {shm * 1e3:8.3f} {sock / shm:8.2f}x")


if __name__ == "__main__":
    main()
