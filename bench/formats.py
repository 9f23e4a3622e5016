"""One small tabular classifier per framework (scikit-learn, XGBoost, LightGBM, CatBoost, Keras,
MLflow) served by inferd, beside the framework's own predict in-process on the same rows, at
batch 1 and batch 64, in one run.

    .venv/bin/python bench/formats.py                           # every installed framework, unix and binary
    .venv/bin/python bench/formats.py --frameworks xgboost,lightgbm --batches 1,64 --duration 3

The models are examples/make_tabular_models.py's (20 FP32 features, 3 classes). A framework that
is not installed, or whose model the daemon does not serve (no backend in this checkout, FAILED),
is left out with a line saying why. It exits 1 if an installed framework's model does not come
up READY, or if an answer differs from the framework's or a request failed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shlex
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import loadgen  # noqa: E402
import make_tabular_models as tabular  # noqa: E402
from frontends import KIND, hot_request, unix_message  # noqa: E402
from report import fmt  # noqa: E402
from server import Server  # noqa: E402
from workloads import Workload, time_calls  # noqa: E402

from bench import run_one  # noqa: E402
from inferd.client import Client  # noqa: E402

MODES = ("unix", "binary")
Predict = Callable[[np.ndarray], dict[str, np.ndarray]]


def _sklearn(path: pathlib.Path) -> Predict:
    import joblib
    model = joblib.load(path)
    return lambda x: {"probabilities": model.predict_proba(x)}


def _xgboost(path: pathlib.Path) -> Predict:
    import xgboost
    booster = xgboost.Booster(model_file=str(path))
    booster.set_param({"nthread": 1})
    return lambda x: {"probabilities": booster.inplace_predict(x)}  # XGBoost's fastest path


def _lightgbm(path: pathlib.Path) -> Predict:
    import lightgbm
    booster = lightgbm.Booster(model_file=str(path))
    return lambda x: {"probabilities": booster.predict(x, num_threads=1)}  # as a worker runs it


def _catboost(path: pathlib.Path) -> Predict:
    import catboost
    model = catboost.CatBoostClassifier()
    model.load_model(str(path))
    return lambda x: {"probabilities": model.predict_proba(x, thread_count=1)}


def _keras(path: pathlib.Path) -> Predict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    model = keras.models.load_model(path)
    # Keras' compiled predict step: model.predict() costs ~50-100 ms of set-up per call at these
    # sizes, an eager model(x) ~2 ms.
    return lambda x: {"probabilities": np.asarray(model.predict_on_batch(x))}


def _mlflow(path: pathlib.Path) -> Predict:
    import mlflow.pyfunc
    import pandas as pd
    model = mlflow.pyfunc.load_model(str(path))
    return lambda x: {"label": np.asarray(model.predict(pd.DataFrame(x, columns=tabular.COLUMNS)))}


@dataclasses.dataclass(frozen=True)
class Framework:
    relative: str  # the model's path in the models directory (make_tabular_models.TABULAR)
    backend: str  # its inferd backend (inferd.backends.BACKENDS key)
    load: Callable[[pathlib.Path], Predict]

    @property
    def model(self) -> str:
        return self.relative.split("/")[0].split(".")[0]


FRAMEWORKS = {
    "sklearn": Framework("tabular_sklearn.joblib", "sklearn", _sklearn),
    "xgboost": Framework("tabular_xgboost.ubj", "xgboost", _xgboost),
    "lightgbm": Framework("tabular_lightgbm.txt", "lightgbm", _lightgbm),
    "catboost": Framework("tabular_catboost/1/model.cbm", "catboost", _catboost),
    "keras": Framework("tabular_keras.keras", "tensorflow", _keras),
    "mlflow": Framework("tabular_mlflow", "mlflow", _mlflow),
}


def build_models(root: pathlib.Path, names: list[str]) -> tuple[list[str], list[str]]:
    """(frameworks whose model was written, lines saying why the others were left out)."""
    from inferd.backends import BACKENDS

    built, skipped = [], []
    for name in names:
        fw = FRAMEWORKS[name]
        module, extra, builder = tabular.TABULAR[fw.relative]
        if not tabular.installed(module):
            skipped.append(f"{name}: {module} is not installed (pip install 'inferd[{extra}]')")
        elif fw.backend not in BACKENDS:
            skipped.append(f"{name}: this checkout has no '{fw.backend}' backend (inferd.backends.BACKENDS)")
        else:
            builder(root / fw.relative)
            built.append(name)
    return built, skipped


def wait_loaded(client: Client, models: list[str], timeout: float) -> dict[str, dict]:
    """Each model's repository entry once none is loading any more (or after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = {m["name"]: m for m in client.models()}
        found = {name: entries.get(name, {"state": "absent"}) for name in models}
        if all(e["state"] in ("READY", "FAILED", "absent") for e in found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def rows(batch: int) -> np.ndarray:
    return tabular.tabular_data(rows=batch, seed=7)[0]


def request_inputs(metadata: dict, x: np.ndarray) -> dict[str, np.ndarray]:
    """The request's inputs for feature rows `x`, by the model's metadata: one matrix input, or
    one input per DataFrame column (named f0..f19)."""
    specs = metadata["inputs"]
    types = {"FP32": np.float32, "FP64": np.float64}
    if len(specs) == 1 and len(specs[0]["shape"]) == 2:
        return {specs[0]["name"]: x.astype(types.get(specs[0]["datatype"], np.float32))}
    return {s["name"]: np.ascontiguousarray(x[:, tabular.COLUMNS.index(s["name"])]).astype(types.get(s["datatype"], np.float32))
            for s in specs}


def reference(metadata: dict, predict: Predict, x: np.ndarray) -> dict[str, np.ndarray]:
    """The framework's answer, named as the daemon names it: a model with one output gets that
    output's name (a Keras or MLflow signature names its own)."""
    ref = predict(x)
    outputs = [o["name"] for o in metadata["outputs"]]
    if len(ref) == 1 and next(iter(ref)) not in outputs and len(outputs) == 1:
        ref = {outputs[0]: next(iter(ref.values()))}
    return ref


def check(client: Client, model: str, inputs: dict, ref: dict[str, np.ndarray]) -> str:
    """One request off the hot path, fully parsed, against the framework's own answer."""
    try:
        got = client.infer(model, inputs, outputs=list(ref))
    except Exception as e:  # noqa: BLE001 - shown in the table, the run goes on
        return f"error: {e}"
    for name, want in ref.items():
        y = got.get(name)
        if y is None or y.size != want.size or not np.allclose(y.reshape(want.shape), want, atol=1e-5):
            return f"MISMATCH {name}"
    return "ok"


def measure(args, daemon: Server, name: str, socket: str, metadata: dict, predict: Predict) -> list[dict]:
    """Raw predict, then each mode at each batch size, for one framework."""
    fw, out = FRAMEWORKS[name], []
    clients = {"unix": Client(socket=socket), "binary": Client(url="http://{}:{}".format(*daemon.addresses["http"]))}
    addrs = {"unix": socket, "binary": daemon.addresses["http"]}
    for batch in args.batches:
        x = rows(batch)
        inputs, ref = request_inputs(metadata, x), reference(metadata, predict, x)
        raw = time_calls(lambda x=x: predict(x), args.duration + args.warmup)
        out.append({"framework": name, "path": "raw", "batch": batch, "rps": raw["calls_s"],
                    "p50_ms": raw["p50_ms"], "verify": ""})
        wl = Workload(fw.model, inputs, ref)
        for mode in args.modes:
            verdict = check(clients[mode], fw.model, inputs, ref)
            request = hot_request(mode, addrs[mode], wl)
            if mode == "unix":  # the hot frame asks for the reference's outputs only, as HTTP's does
                request = loadgen.build_frame({**unix_message(wl), "outputs": list(ref)})
            r = run_one(args, None, KIND[mode], addrs[mode], request, args.concurrency)
            out.append({"framework": name, "path": mode, "batch": batch, "rps": r["rps"],
                        "p50_ms": r["p50_ms"], "verify": verdict if not r["errors"] else f"{verdict}, {r['errors']} errors",
                        "x_raw": r["rps"] / raw["calls_s"], "plus_p50": (r["p50_ms"] or 0) - raw["p50_ms"]})
            print(f"  {name:8} {mode:6} b={batch:<3} {r['rps']:9.1f} req/s  p50 {fmt(r['p50_ms'], 3)} ms  "
                  f"(raw {raw['calls_s']:.1f} calls/s, p50 {raw['p50_ms']:.3f} ms)  verify {verdict}", flush=True)
    return out


def print_table(results: list[dict], skipped: list[str], args) -> None:
    print(f"\nclosed loop, concurrency {args.concurrency}, {args.duration} s per run; raw = the framework's "
          "own predict in-process on the same rows")
    print(f"  {'framework':9} {'path':6} {'batch':>5} {'req/s':>9} {'p50 ms':>8} {'x raw':>6} {'+p50 ms':>8}  verify")
    for r in results:
        print(f"  {r['framework']:9} {r['path']:6} {r['batch']:>5} {r['rps']:9.1f} {r['p50_ms']:8.3f} "
              f"{fmt(r.get('x_raw')):>6} {fmt(r.get('plus_p50'), 3):>8}  {r['verify']}")
    print("  'x raw' = req/s / raw calls/s at the same batch; '+p50 ms' = p50 - raw p50 (what the daemon adds)")
    for line in skipped:
        print(f"  left out: {line}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frameworks", type=lambda s: s.split(","), default=list(FRAMEWORKS))
    ap.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 64],
                    help="rows per request")
    ap.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    ap.add_argument("--concurrency", type=int, default=1, help="closed-loop clients")
    ap.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=0.5, help="unrecorded seconds before each run")
    ap.add_argument("--load-timeout", type=float, default=120.0, help="seconds to wait for the models to load")
    ap.add_argument("--daemon-cmd", default="{python} -m inferd.daemon",
                    help="command that starts the daemon; 'serve --models DIR ...' is appended")
    args = ap.parse_args()
    if set(args.frameworks) - set(FRAMEWORKS) or set(args.modes) - set(MODES) or min(args.batches) < 1:
        ap.error(f"frameworks are {','.join(FRAMEWORKS)}; modes {','.join(MODES)}; batches >= 1")
    args.procs, args.grpc_channels = 1, 1  # what bench.run_one reads
    return args


def main() -> None:
    args = parse_args()
    results: list[dict] = []
    failed: list[str] = []  # installed and served by this checkout, yet not READY
    with tempfile.TemporaryDirectory(prefix="inferd-formats-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        built, skipped = build_models(tmp / "models", args.frameworks)
        if built:
            socket = str(tmp / "inferd.sock")
            cmd = [a.replace("{python}", sys.executable) for a in shlex.split(args.daemon_cmd)]
            cmd += ["serve", "--models", str(tmp / "models"), "--http", "127.0.0.1:0", "--grpc", "",
                    "--socket", socket, "--log-format", "json"]
            print(f"starting daemon: {shlex.join(cmd)}", flush=True)
            daemon = Server(cmd, tmp, "daemon", ("http", "socket"), timeout=args.load_timeout)
            try:
                client = Client(socket=socket)
                states = wait_loaded(client, [FRAMEWORKS[n].model for n in built], args.load_timeout)
                for name in built:
                    fw = FRAMEWORKS[name]
                    entry = states[fw.model]
                    if entry["state"] != "READY":
                        failed.append(f"{name}: {fw.model} is {entry['state']}: {entry.get('reason', '')}")
                        continue
                    predict = fw.load(tmp / "models" / fw.relative)
                    results += measure(args, daemon, name, socket, client.model_metadata(fw.model), predict)
            finally:
                daemon.stop()
    print_table(results, skipped + failed, args)
    wrong = [r for r in results if r["path"] != "raw" and r["verify"] != "ok"]
    if failed or wrong:  # a short CI run catches a format that broke
        sys.exit(f"FAILED: {len(failed)} model(s) not READY, {len(wrong)} run(s) with wrong answers or errors")


if __name__ == "__main__":
    main()
