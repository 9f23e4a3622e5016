"""Installed as a user or the packages install it (`pip install '.[cpu]'`, not editable), the
daemon runs from any directory. Started from the checkout's root, where the repository's own
inferd/ folder lies (only inferd/__init__.py: it would shadow the installed package) and where
this test plants a numpy.py and an onnxruntime.py, its forkserver and workers import none of them
and the daemon serves its models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import make_models
import numpy as np
import pytest
from daemon_process import DaemonProcess

from inferd.client import Client, InferdClientError

ROOT = Path(__file__).resolve().parents[2]

# Written into the checkout's root while the daemon runs: imported by any of its processes, it
# leaves a line in the marker file and fails that process (a RuntimeError is not the ImportError
# the forkserver skips silently).
PLANTED = '''import os, sys
with open({marker!r}, "a") as f:
    f.write(f"{{__file__}} imported by pid {{os.getpid()}} {{sys.argv}}\\n")
raise RuntimeError(f"{{__file__}} was imported from the daemon's working directory")
'''

# A Python model that reports what its worker imported, and from where.
PROBE = '''import json, os, sys
import numpy as np


class Model:
    inputs = [{"name": "x", "datatype": "INT32", "shape": [-1, 1]}]
    outputs = [{"name": "report", "datatype": "BYTES", "shape": [-1, 1]}]

    def infer(self, inputs):
        report = json.dumps({
            "sys_path": sys.path,
            "files": {m: getattr(sys.modules.get(m), "__file__", None)
                      for m in ("inferd", "inferd.backends.worker", "numpy", "onnxruntime")},
            "PYTHONSAFEPATH": os.environ.get("PYTHONSAFEPATH"),
        })
        return {"report": np.array([[report.encode()]] * len(inputs["x"]), dtype=object)}
'''


def run(cmd: list) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with `pip install '.[cpu]'` of a copy of the project's source
    (what pyproject.toml names: its package folders and readme), so that pip's build writes
    nothing into the checkout."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    for folder in sorted(folders):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", pyproject["project"]["readme"]):
        shutil.copy2(ROOT / name, source / name)
    venv = base / "venv"
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{source}[cpu]"])
    return venv


def big_json_sum(d: DaemonProcess, a: np.ndarray, b: np.ndarray) -> list:
    """add_sub over HTTP with a JSON body padded past server.max_structured_bytes, which is
    decoded in a decoder process that the daemon starts (from its working directory too)."""
    request = {"inputs": [{"name": n, "shape": list(x.shape), "datatype": "INT32", "data": x.ravel().tolist()}
                          for n, x in (("INPUT0", a), ("INPUT1", b))], "outputs": [{"name": "OUTPUT0"}]}
    body = json.dumps(request).encode() + b" " * (2 << 20)
    with urllib.request.urlopen(urllib.request.Request(d.url + "/v2/models/add_sub/infer", data=body), timeout=60) as r:
        [output] = json.loads(r.read())["outputs"]
    return np.array(output["data"]).reshape(output["shape"]).tolist()


def serve_from_root(tmp_path: Path, planted: list[str], **daemon) -> dict:
    """Start the daemon in the checkout's root with the modules `planted` there, check a real
    inference against numpy, and return the probe's report from inside a worker."""
    models = tmp_path / "models"
    make_models.build_add_sub(models / "add_sub" / "1" / "model.onnx")
    (models / "probe.py").write_text(PROBE)
    marker = tmp_path / "imported.log"
    paths = [ROOT / f"{name}.py" for name in planted]
    for path in paths:
        assert not path.exists(), f"{path} is in the way"
    a = np.random.default_rng(0).integers(-1000, 1000, (3, 16), dtype=np.int32)
    b = np.random.default_rng(1).integers(-1000, 1000, (3, 16), dtype=np.int32)
    # PYTHONPATH and PYTHONSAFEPATH empty: the test's environment neither helps nor hides.
    env = {"PYTHONPATH": "", "PYTHONSAFEPATH": ""}
    try:
        for path in paths:
            path.write_text(PLANTED.format(marker=str(marker)))
        with DaemonProcess(models, cwd=ROOT, env=env, **daemon) as d, Client(socket=d.socket_path) as client:
            assert Path(f"/proc/{d.proc.pid}/cwd").resolve() == ROOT
            try:
                out = client.infer("add_sub", {"INPUT0": a, "INPUT1": b})
                assert big_json_sum(d, a, b) == (a + b).tolist()  # through a JSON decoder process
                [[report]] = client.infer("probe", {"x": np.zeros((1, 1), np.int32)})["report"]
            except InferdClientError as e:
                imported = marker.read_text() if marker.exists() else ""
                pytest.fail(f"{e}\n{imported}the daemon's log:\n" + "\n".join(d.lines[-40:]))
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
            for cached in (ROOT / "__pycache__").glob(f"{path.stem}.*.pyc"):
                cached.unlink()
    assert not marker.exists(), marker.read_text()
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    report = json.loads(report)
    assert all(report["files"].values()), report
    assert "" not in report["sys_path"] and str(ROOT) not in report["sys_path"], report["sys_path"]
    assert report["PYTHONSAFEPATH"] is None  # the workers' environment is the daemon's
    return report


def test_installed_daemon_started_in_the_checkout_imports_nothing_from_it(venv, tmp_path):
    assert (ROOT / "inferd" / "__init__.py").is_file()  # the shadowing folder is there
    assert not (ROOT / "inferd" / "daemon").exists()  # and holds no inferd.daemon
    site_packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert (site_packages / "inferd" / "daemon" / "cli.py").is_file()  # installed, not editable
    report = serve_from_root(tmp_path, ["numpy", "onnxruntime"], program=[str(venv / "bin" / "inferd")])
    for name, file in report["files"].items():  # all from the new virtual environment
        assert Path(file).resolve().is_relative_to(site_packages.resolve()), (name, file)


def test_python_m_daemon_keeps_its_working_directory_off_its_path(tmp_path):
    # The test suite's way (an editable install, `python -m inferd.daemon`), which puts the working
    # directory first on sys.path: the daemon drops it before it imports anything that could be
    # planted there (inferd.daemon.__main__), so neither it nor its workers import from it.
    report = serve_from_root(tmp_path, ["numpy", "onnxruntime"])
    for name in ("numpy", "onnxruntime"):  # the installed packages, not the planted modules
        assert Path(report["files"][name]).resolve().parent != ROOT, report["files"]
        assert Path(report["files"][name]).name == "__init__.py", report["files"]
