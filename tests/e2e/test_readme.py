"""A new user's first hour: the README's examples run as written against the bundled example
models (only the addresses are the test daemon's), and the command line's errors name what
was wrong with the usage of the command that was typed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.M | re.S)


def _as_tested(text: str, daemon) -> str:
    """The example with the test daemon's addresses for the defaults it was written against."""
    grpc = next(e["address"] for e in daemon.events("listening") if e.get("frontend") == "grpc")
    http = daemon.url.removeprefix("http://")
    for default in ("127.0.0.1:8000", "localhost:8000"):
        text = text.replace(default, http)
    return text.replace("127.0.0.1:8001", grpc)


def _env(daemon) -> dict:
    # socket = "auto" resolves to $XDG_RUNTIME_DIR/inferd.sock: where the test daemon's socket is.
    return {**os.environ, "XDG_RUNTIME_DIR": os.path.dirname(daemon.socket_path)}


PYTHON_EXAMPLES = _blocks("python")
CURL_EXAMPLES = [b for b in _blocks("sh") if b.startswith("curl")]


def test_the_readme_has_the_examples_this_file_runs():
    assert len(PYTHON_EXAMPLES) >= 3 and len(CURL_EXAMPLES) >= 2


@pytest.mark.parametrize("example", PYTHON_EXAMPLES, ids=lambda b: b.splitlines()[0][:40])
def test_python_example_runs_as_written(daemon, example, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_as_tested(example, daemon))
    done = subprocess.run([sys.executable, str(script)], env=_env(daemon), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "every example prints its answer"


@pytest.mark.parametrize("example", CURL_EXAMPLES, ids=lambda b: b.splitlines()[0][:40])
def test_curl_example_answers_without_error(daemon, example):
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", _as_tested(example, daemon).replace("curl -s", "curl -sS --fail-with-body")],
                          env=_env(daemon), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"error"' not in done.stdout and '"outputs"' in done.stdout


def _inferd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferd.daemon", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, says", [
    (["serve", "--http", "localhost"], "argument --http: expected HOST:PORT"),
    (["serve", "--grpc", "127.0.0.1:70000"], "argument --grpc: expected HOST:PORT"),
    (["serve", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_a_bad_serve_flag_is_named_with_the_serve_usage(args, says):
    done = _inferd(*args)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: inferd serve") and says in done.stderr, done.stderr


def test_make_models_keep_leaves_edited_configs_and_models_alone(tmp_path):
    make = [sys.executable, str(ROOT / "examples" / "make_models.py")]
    subprocess.run([*make, str(tmp_path)], check=True, capture_output=True, timeout=300)
    config = tmp_path / "add_sub" / "config.toml"
    config.write_text(config.read_text() + "max_queue_delay_ms = 7\n")
    (tmp_path / "mlp.onnx").unlink()
    model = tmp_path / "identity_all.onnx"
    before = model.stat().st_mtime_ns
    subprocess.run([*make, "--keep", str(tmp_path)], check=True, capture_output=True, timeout=300)
    assert config.read_text().endswith("max_queue_delay_ms = 7\n")
    assert model.stat().st_mtime_ns == before
    assert (tmp_path / "mlp.onnx").stat().st_size > 0  # what was missing is written again


def test_example_models_made_under_umask_002_are_trusted(tmp_path):
    """inferd refuses code that its group could change: a checkout with umask 002 (common for
    ordinary users) must still serve the Python and TorchScript examples."""
    make = [sys.executable, str(ROOT / "examples" / "make_models.py"), str(tmp_path / "models")]
    subprocess.run(make, check=True, capture_output=True, timeout=300, preexec_fn=lambda: os.umask(0o002))
    writable = [p for p in [tmp_path / "models", *(tmp_path / "models").rglob("*")] if p.stat().st_mode & 0o022]
    assert (tmp_path / "models" / "tokenize" / "1" / "model.py").exists() and not writable
