"""The benchmark's models and requests (Workload) and raw in-process onnxruntime on them, the
reference every load run is compared with.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import numpy as np
import onnxruntime as ort

ROWS = 512
TINY_WIDTH = 16
NOISE = 0.2  # raw before/after differing by more than this means the machine is noisy


@dataclasses.dataclass
class Workload:
    """One request's inputs for a model on the server, and raw onnxruntime's outputs for them."""
    model: str
    inputs: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]


def mlp_feed(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((batch, ROWS)).astype(np.float32)}


def tiny_feed(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {n: rng.integers(-1000, 1000, (batch, TINY_WIDTH), dtype=np.int32)
            for n in ("INPUT0", "INPUT1")}


def workload(path: pathlib.Path, name: str, feed) -> Workload:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = feed(1, np.random.default_rng(1))
    names = [o.name for o in sess.get_outputs()]
    return Workload(name, inputs, dict(zip(names, sess.run(names, inputs))))


# ---------------------------------------------------------------- raw onnxruntime

def time_calls(call, seconds: float, warmup_calls: int = 20) -> dict:
    """p50/p99 (ms) and calls/s of `call()` repeated for `seconds`, after `warmup_calls` calls
    (the first calls allocate arenas and spin up thread pools)."""
    for _ in range(warmup_calls):
        call()
    lat = []
    t0 = time.perf_counter_ns()
    end = t0 + int(seconds * 1e9)
    t = t0
    while t < end:
        call()
        t1 = time.perf_counter_ns()
        lat.append(t1 - t)
        t = t1
    return {"p50_ms": float(np.percentile(lat, 50)) / 1e6, "p99_ms": float(np.percentile(lat, 99)) / 1e6,
            "calls_s": len(lat) / ((t - t0) / 1e9)}


def measure_raw(model: pathlib.Path, feed, plan=((1, 2.0), (8, 1.0), (64, 1.0))) -> dict:
    """Latency and throughput of sess.run for each (batch, seconds) of plan."""
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    out = {}
    for batch, seconds in plan:
        inputs = feed(batch, rng)
        timed = time_calls(lambda inputs=inputs: sess.run(None, inputs), seconds)
        out[str(batch)] = {**timed, "rows_s": timed["calls_s"] * batch}
    return out


def mean_raw(before: dict, after: dict, label: str = "") -> tuple[dict, list[str]]:
    mean, warnings = {}, []
    for b in before:
        mean[b] = {k: (before[b][k] + after[b][k]) / 2 for k in before[b]}
        for k in ("p50_ms", "calls_s"):
            x, y = before[b][k], after[b][k]
            if abs(x - y) > NOISE * (x + y) / 2:
                warnings.append(f"raw {label}batch {b} {k} moved {x:.4g} -> {y:.4g} (>{NOISE:.0%}): "
                                "noisy machine")
    return mean, warnings



def measure_raw_all(mlp: pathlib.Path, tiny: pathlib.Path | None) -> dict:
    """Raw figures for the run's models: mlp at batch 1, 8 and 64; add_sub (--tiny) at batch 1."""
    out = {"mlp": measure_raw(mlp, mlp_feed)}
    if tiny:
        out["tiny"] = measure_raw(tiny, tiny_feed, ((1, 2.0),))
    return out
