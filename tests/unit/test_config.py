"""Config: TOML, then INFERD_* environment, then CLI flags; bad keys, types and values refused
with the file, the key and the reason."""

import subprocess
import sys

import pytest

from inferd.common.errors import ConfigError
from inferd.config.model import ModelSettings, PipelineTensor, load_model_config
from inferd.config.settings import AuthSection, load_daemon_config, read_token


def _write(tmp_path, text, name="inferd.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_match_the_design():
    config = load_daemon_config(environ={})
    assert config.server.http == "127.0.0.1:8000" and config.server.grpc == "127.0.0.1:8001"
    assert config.defaults.max_batch_size == 64 and config.defaults.max_queue_delay_ms == 0
    assert config.models.dir == "/var/lib/inferd/models"


def test_precedence_file_then_environment_then_flags(tmp_path):
    path = _write(tmp_path, '[server]\nhttp = "127.0.0.1:1000"\ndrain_timeout_s = 5\n[defaults]\nmax_batch_size = 8\n')
    config = load_daemon_config(path, environ={})
    assert config.server.http == "127.0.0.1:1000" and config.server.drain_timeout_s == 5.0
    env = {"INFERD_SERVER_HTTP": "127.0.0.1:2000", "INFERD_DEFAULTS_MAX_BATCH_SIZE": "16"}
    config = load_daemon_config(path, environ=env)
    assert config.server.http == "127.0.0.1:2000" and config.defaults.max_batch_size == 16
    config = load_daemon_config(path, environ=env, overrides={"server": {"http": "127.0.0.1:3000"}})
    assert config.server.http == "127.0.0.1:3000" and config.defaults.max_batch_size == 16


@pytest.mark.parametrize("text,key,reason", [
    ("[server]\nhtp = 'x'\n", "server.htp", "unknown key"),
    ("[serverz]\n", "serverz", "unknown key"),
    ("[server]\ndrain_timeout_s = 'soon'\n", "server.drain_timeout_s", "expected float"),
    ("[defaults]\nmax_batch_size = 1.5\n", "defaults.max_batch_size", "expected int"),
    ("[defaults]\nmax_batch_size = true\n", "defaults.max_batch_size", "expected int"),
    ("[defaults]\nmax_batch_size = -1\n", "defaults.max_batch_size", "between"),
    ("[defaults]\nmin_workers = 3\nmax_workers = 2\n", "defaults.min_workers", "exceeds max_workers"),
    ("[defaults]\ndevice = 'tpu'\n", "defaults.device", "auto, cpu or cuda:N"),
    ("[server]\nhttp = 'localhost'\n", "server.http", "HOST:PORT"),
    ("[server]\nhttp = '127.0.0.1:70000'\n", "server.http", "HOST:PORT"),
    ("[models]\ncontrol = 'sometimes'\n", "models.control", "one of"),
    ("[server]\nname = ''\n", "server.name", "printable ASCII"),
    ('[server]\nname = "a\\tb"\n', "server.name", "printable ASCII"),
    (f"[server]\nname = '{'x' * 65}'\n", "server.name", "1 to 64"),
    ("server = 3\n", "server", "expected a table"),
    ("[server\n", "(syntax)", ""),
])
def test_bad_daemon_config_names_file_key_and_reason(tmp_path, text, key, reason):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_daemon_config(path, environ={})
    assert e.value.file == str(path) and e.value.key == key and reason in e.value.reason


@pytest.mark.parametrize("env,key", [
    ({"INFERD_SERVER_NOPE": "1"}, "INFERD_SERVER_NOPE"),
    ({"INFERD_DEFAULTS_MAX_WORKERS": "many"}, "INFERD_DEFAULTS_MAX_WORKERS"),
])
def test_bad_environment_is_refused(env, key):
    with pytest.raises(ConfigError) as e:
        load_daemon_config(environ=env)
    assert e.value.file == "environment" and e.value.key == key


def test_model_config_overrides_defaults_and_reads_tensors(tmp_path):
    path = _write(tmp_path, 'max_batch_size = 4\n[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1, 3]\n', "config.toml")
    config = load_model_config(path, ModelSettings(max_queue_delay_ms=2))
    assert config.settings.max_batch_size == 4 and config.settings.max_queue_delay_ms == 2
    assert config.inputs[0].shape == (-1, 3) and config.explicit == {"max_batch_size"}
    assert config.backend == ""  # the file's extension or content decides
    assert load_model_config(_write(tmp_path, 'backend = "xgboost"\n', "config.toml"), ModelSettings()).backend == "xgboost"


@pytest.mark.parametrize("text,key", [
    ("max_batch = 4\n", "max_batch"),
    ("max_queue_delay_ms = -2\n", "max_queue_delay_ms"),
    ('[[inputs]]\nname = "x"\ndatatype = "FLOAT"\nshape = [1]\n', "inputs[0].datatype"),
    ('[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-3]\n', "inputs[0].shape"),
    ('[[outputs]]\nname = "y"\n', "outputs[0]"),
    ("backend = 3\n", "backend"),
    ('backend = "XGBoost model"\n', "backend"),
])
def test_bad_model_config_is_refused(tmp_path, text, key):
    path = _write(tmp_path, text, "config.toml")
    with pytest.raises(ConfigError) as e:
        load_model_config(path, ModelSettings())
    assert e.value.file == str(path) and e.value.key == key


def test_cli_refuses_bad_config_at_start_and_prints_version(tmp_path):
    path = _write(tmp_path, "[server]\nhttp = 5\n")
    run = subprocess.run([sys.executable, "-m", "inferd.daemon", "serve", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert f"{path}: server.http: expected str" in run.stderr
    run = subprocess.run([sys.executable, "-m", "inferd.daemon", "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("inferd ")


def test_model_parameters_are_a_free_form_table_for_the_models_code(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('max_batch_size = 4\n[parameters]\nvocab = "words.txt"\nlower = true\n')
    config = load_model_config(path, ModelSettings())
    assert config.parameters == {"vocab": "words.txt", "lower": True} and config.settings.max_batch_size == 4
    path.write_text('parameters = "x"\n')
    with pytest.raises(ConfigError) as e:
        load_model_config(path, ModelSettings())
    assert e.value.key == "parameters"


def test_pipeline_config_reads_steps(tmp_path):
    path = _write(tmp_path, '[[pipeline]]\nmodel = "tok"\n[[pipeline]]\nmodel = "enc"\nversion = 2\n'
                            'inputs = { ids = "tok.tokens" }\n', "config.toml")
    config = load_model_config(path, ModelSettings())
    assert [(s.model, s.version, s.inputs) for s in config.pipeline] == [("tok", "", ()), ("enc", "2", (("ids", "tok.tokens"),))]
    assert config.pipeline_inputs == () and config.pipeline_outputs == ()


def test_pipeline_config_reads_output_names_and_declared_tensors(tmp_path):
    path = _write(tmp_path, 'outputs = ["probs", { name = "label", datatype = "BYTES", shape = [-1] }]\n'
                            '[[inputs]]\nname = "text"\ndatatype = "BYTES"\n'
                            '[[pipeline]]\nmodel = "enc"\noutputs = { probabilities = "probs" }\n', "config.toml")
    config = load_model_config(path, ModelSettings())
    assert config.pipeline[0].outputs == (("probabilities", "probs"),)
    assert config.pipeline_outputs == (PipelineTensor("probs"), PipelineTensor("label", "BYTES", (-1,)))
    assert config.pipeline_inputs == (PipelineTensor("text", "BYTES"),)
    assert "max_batch_size" not in config.explicit
    config = load_model_config(_write(tmp_path, 'max_batch_size = 4\n[[pipeline]]\nmodel = "a"\n', "config.toml"), ModelSettings())
    assert config.settings.max_batch_size == 4 and "max_batch_size" in config.explicit


@pytest.mark.parametrize("text,key", [
    ("pipeline = []\n", "pipeline"),
    ('[[pipeline]]\nversion = 1\n', "pipeline[0]"),
    ('[[pipeline]]\nmodel = "a/b"\n', "pipeline[0].model"),
    ('[[pipeline]]\nmodel = "a"\nversion = "latest"\n', "pipeline[0].version"),
    ('[[pipeline]]\nmodel = "a"\ninputs = { x = 3 }\n', "pipeline[0].inputs"),
    ('[[pipeline]]\nmodel = "a"\nbatch = 2\n', "pipeline[0]"),
    ('max_queue_delay_ms = 4\n[[pipeline]]\nmodel = "a"\n', "max_queue_delay_ms"),
    ('max_batch_size = -1\n[[pipeline]]\nmodel = "a"\n', "max_batch_size"),
    ('[[pipeline]]\nmodel = "a"\noutputs = { x = "" }\n', "pipeline[0].outputs"),
    ('[[pipeline]]\nmodel = "a"\noutputs = ["x"]\n', "pipeline[0].outputs"),
    ('outputs = "x"\n[[pipeline]]\nmodel = "a"\n', "outputs"),
    ('outputs = [3]\n[[pipeline]]\nmodel = "a"\n', "outputs[0]"),
    ('outputs = ["x", "x"]\n[[pipeline]]\nmodel = "a"\n', "outputs[1].name"),
    ('inputs = [{ name = "x", datatype = "FLOAT" }]\n[[pipeline]]\nmodel = "a"\n', "inputs[0].datatype"),
    ('inputs = [{ name = "x", shape = [-2] }]\n[[pipeline]]\nmodel = "a"\n', "inputs[0].shape"),
    ('inputs = [{ name = "x", dims = [1] }]\n[[pipeline]]\nmodel = "a"\n', "inputs[0]"),
    ('backend = "xgboost"\n[[pipeline]]\nmodel = "a"\n', "backend"),
])
def test_bad_pipeline_config_is_refused(tmp_path, text, key):
    path = _write(tmp_path, text, "config.toml")
    with pytest.raises(ConfigError) as e:
        load_model_config(path, ModelSettings())
    assert e.value.key == key


@pytest.mark.parametrize("kind", ["directory", "not utf-8"])
def test_an_unreadable_file_is_a_config_error_naming_it(tmp_path, kind):
    path = tmp_path / "config.toml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"max_batch_size = 8 # caf\xe9\n")
    reason = "cannot read it" if kind == "directory" else "not UTF-8"
    for load in (lambda: load_daemon_config(path, environ={}), lambda: load_model_config(path, ModelSettings())):
        with pytest.raises(ConfigError, match=reason) as e:
            load()
        assert (e.value.file, e.value.key) == (str(path), "(file)")
    token = tmp_path / "token"
    token.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_token(AuthSection(token_file=str(token)))
