"""The layering of ARCHITECTURE.md as import contracts, checked on the source (every import
statement, at module level or inside a function), the size rules (no file over 400 lines, no
function over 60), and the linter (ruff, configured in pyproject.toml).

    inferd.daemon -> inferd.scheduler -> inferd.backends -> inferd.config -> inferd.common
    inferd.client -> inferd.config, inferd.common
    inferd.backends.triton.bls -> inferd.client (a model's calls to other models go through the daemon's socket)

A layer imports only layers below it; nothing imports the daemon; the front-ends reach the
models only through the data plane; the runtimes (onnxruntime, torch) are imported only by the
backend modules that worker processes load, never by anything the daemon imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["inferd.daemon", "inferd.scheduler", "inferd.backends", "inferd.config", "inferd.common"]
RUNTIMES = {"onnxruntime", "torch", "tensorflow", "keras", "sklearn", "joblib", "skops", "pandas", "xgboost", "lightgbm",
            "catboost", "mlflow", "yaml"}
GENERATED = ("grpc_gen", "model_config_pb2.py")  # protoc's output: not ours to size


def _package_dirs() -> dict[str, Path]:
    """inferd.<sub> -> its folder, as pyproject.toml maps them."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in dirs.items()}


def _modules() -> dict[str, Path]:
    """Every module of the installed packages, by its dotted name."""
    out = {}
    for package, folder in _package_dirs().items():
        if package == "inferd":
            out["inferd"] = folder / "__init__.py"
            continue
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The modules `name` imports, anywhere in its body (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _layer(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if _within(module, layer)), None)


def _violations(importers: str, forbidden: list[str]) -> list[str]:
    return sorted(f"{name} imports {imported}" for name, imported_set in IMPORTS.items() if _within(name, importers)
                  for imported in imported_set if any(_within(imported, f) for f in forbidden))


def test_every_package_is_found():
    assert {"inferd.daemon.dataplane", "inferd.daemon.frontends.http", "inferd.scheduler.queue",
            "inferd.backends.worker", "inferd.config.settings", "inferd.common.errors", "inferd.client"} <= MODULES.keys()


def test_each_layer_imports_only_the_layers_below_it():
    bad = []
    for name, imported in IMPORTS.items():
        mine = _layer(name)
        if mine is None:
            continue
        bad += [f"{name} imports {m}" for m in imported if (theirs := _layer(m)) is not None and theirs < mine]
    assert bad == []


def test_nothing_imports_the_daemon():
    assert [v for v in _violations("inferd", ["inferd.daemon"]) if not v.startswith("inferd.daemon")] == []


def test_the_client_imports_only_config_and_common():
    assert _violations("inferd.client", ["inferd.daemon", "inferd.scheduler", "inferd.backends"]) == []


def test_of_the_backends_only_bls_imports_the_client():
    """A model calls other models (Triton's BLS) as a client of the daemon, so that its requests
    are queued and batched with theirs; nothing else in a worker talks to the daemon that way."""
    importers = {v.split(" imports ")[0] for v in _violations("inferd.backends", ["inferd.client"])}
    assert importers == {"inferd.backends.triton.bls"}
    assert _violations("inferd.scheduler", ["inferd.client"]) == []


def test_front_ends_reach_models_only_through_the_data_plane():
    forbidden = ["inferd.scheduler", "inferd.backends", "inferd.daemon.models", "inferd.daemon.server"]
    assert _violations("inferd.daemon.frontends", forbidden) == []


def test_models_and_operations_do_not_reach_up():
    assert _violations("inferd.daemon.models", ["inferd.daemon.frontends", "inferd.daemon.dataplane",
                                                "inferd.daemon.server", "inferd.daemon.listeners"]) == []
    assert _violations("inferd.daemon.operations", ["inferd.daemon.frontends", "inferd.daemon.models",
                                                    "inferd.daemon.dataplane", "inferd.daemon.server"]) == []


def _reachable(start: list[str]) -> set[str]:
    """Every module (ours or not) that importing `start` imports, following our own modules."""
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for m in IMPORTS.get(name, ()) if m not in seen)
    return seen


def test_runtimes_are_imported_only_by_worker_side_backends():
    daemon_side = [m for m in MODULES if not _within(m, "inferd.backends")]
    reached = {m.split(".")[0] for m in _reachable(daemon_side)}
    assert reached & RUNTIMES == set()
    importers = sorted(n for n, imported in IMPORTS.items() if {m.split(".")[0] for m in imported} & RUNTIMES)
    assert importers == ["inferd.backends.catboost", "inferd.backends.lightgbm", "inferd.backends.mlflow_pyfunc",
                         "inferd.backends.mlmodel", "inferd.backends.onnx", "inferd.backends.pytorch", "inferd.backends.sklearn",
                         "inferd.backends.tabular", "inferd.backends.tensorflow", "inferd.backends.xgboost"]


def test_the_daemon_process_imports_no_runtime():
    """The same, for real: everything the daemon and its CLI import, in a fresh interpreter."""
    code = ("import sys, inferd.daemon.server, inferd.daemon.cli, inferd.client; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {RUNTIMES!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _sources() -> list[Path]:
    folders = list(_package_dirs().values()) + [ROOT / d for d in ("tests", "bench", "examples")]
    # Triton's example clients, repository and Python models, kept unchanged
    vendored = {ROOT / "tests" / name for name in ("triton_examples", "triton_repository", "triton_python_examples")}
    return sorted(p for f in folders for p in f.rglob("*.py")
                  if not set(GENERATED) & set(p.parts) and not vendored & set(p.parents))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_small(path):
    text = path.read_text()
    assert text.count("\n") <= 400, f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines (400 at most)"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert long == [], f"{path.relative_to(ROOT)}: functions over 60 lines"


def test_the_code_is_clean_under_ruff():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
