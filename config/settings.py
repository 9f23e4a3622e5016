"""Typed configuration: the daemon's TOML file, INFERD_* environment overrides, CLI overrides,
and per-model `config.toml` files.

Every section is a dataclass; one small loader checks keys, types and values and refuses
anything else with the file, the key and the reason (ConfigError).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from inferd.config.errors import ConfigError
from inferd.config.tensors import DATATYPES, TensorSpec

MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")

Check = Callable[[Any], "str | None"]


def _field(default, check: Check | None = None):
    return dataclasses.field(default=default, metadata={"check": check} if check else {})


def _at_least(low):
    return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def _between(low, high):
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}, got {v}"


def _address(value: str) -> str | None:
    """'' (disabled) or HOST:PORT with a port in 0..65535 (0 picks a free port)."""
    if value == "":
        return None
    try:
        parse_address(value)
    except ValueError as e:
        return str(e)
    return None


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port in 0..65535, got {value!r}")
    return host.strip("[]"), int(port)


def socket_path(value: str, environ: Mapping[str, str] | None = None) -> str:
    """server.socket: "auto" is $RUNTIME_DIRECTORY/inferd.sock under systemd, else
    $XDG_RUNTIME_DIR/inferd.sock, else /tmp/inferd-<uid>/inferd.sock; anything else is a path."""
    if value != "auto":
        return value
    environ = os.environ if environ is None else environ
    if environ.get("RUNTIME_DIRECTORY"):
        return os.path.join(environ["RUNTIME_DIRECTORY"].split(":")[0], "inferd.sock")
    if environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(environ["XDG_RUNTIME_DIR"], "inferd.sock")
    return f"/tmp/inferd-{os.getuid()}/inferd.sock"


def _one_of(*choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}"


def _device(value: str) -> str | None:
    if re.fullmatch(r"auto|cpu|cuda:\d+", value):
        return None
    return f"must be auto, cpu or cuda:N; got {value!r}"


@dataclasses.dataclass(frozen=True)
class ServerSection:
    http: str = _field("127.0.0.1:8000", _address)
    grpc: str = _field("127.0.0.1:8001", _address)
    socket: str = "auto"  # see socket_path()
    http_socket: str = ""
    socket_group: str = "inferd"
    drain_timeout_s: float = _field(30.0, _between(0, 3600))
    max_request_bytes: int = _field(64 * 1024 * 1024, _at_least(1024))


@dataclasses.dataclass(frozen=True)
class ModelsSection:
    dir: str = "/var/lib/inferd/models"
    control: str = _field("watch", _one_of("watch", "poll", "explicit"))
    settle_ms: int = _field(500, _between(0, 600_000))
    poll_interval_s: float = _field(2.0, _between(0.05, 3600))  # control = "poll" only


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Per-model settings: [defaults] in the daemon config, overridden by a model's config.toml."""

    max_batch_size: int = _field(64, _between(0, 1 << 20))
    max_queue_delay_ms: float = _field(0.0, _between(0, 60_000))
    max_queue_rows: int = _field(0, _at_least(0))  # 0 = derived from memory (inferd.scheduler.limits)
    max_queue_bytes: int = _field(0, _at_least(0))  # 0 = derived: a share of the queues' memory budget
    min_workers: int = _field(0, _between(0, 256))
    max_workers: int = _field(2, _between(1, 256))
    idle_timeout_s: float = _field(300.0, _at_least(0))  # idle workers stop (to min_workers); 0 = never
    cold_start_timeout_s: float = _field(30.0, _between(0.001, 3600))  # a request waits this long for a cold start
    load_timeout_s: float = _field(120.0, _between(0.001, 3600))  # a worker not loaded by then failed
    device: str = _field("auto", _device)
    intra_op_threads: int = _field(0, _between(0, 1024))  # 0 = the runtime's default
    intra_op_spinning: bool = False  # onnxruntime's idle threads spin for work (burns the event loop's CPU)
    busy_poll_us: int = _field(500, _between(0, 1_000_000))  # at light load, daemon and worker poll this long after a batch
    shared_memory: bool = True  # batch tensors to and from workers through shared memory
    idempotent: bool = True  # a batch whose worker died runs once more on another worker
    scale_up_wait_ms: float = _field(20.0, _between(0, 3_600_000))  # batches waiting this long...
    scale_up_window_s: float = _field(1.0, _between(0, 3600))  # ...for this long add a worker
    crash_loop_count: int = _field(5, _between(1, 1000))  # this many worker failures...
    crash_loop_window_s: float = _field(60.0, _between(0.001, 86400))  # ...within this window: FAILED
    typical_dim_size: int = _field(16, _between(1, 1 << 20))  # dynamic non-batch dimensions, when memory is measured

    def cross_check(self) -> tuple[str, str] | None:
        if self.min_workers > self.max_workers:
            return "min_workers", f"min_workers ({self.min_workers}) exceeds max_workers ({self.max_workers})"
        return None



@dataclasses.dataclass(frozen=True)
class MemorySection:
    """How much of each device (the host, every GPU) the models may use; see scheduler/limits.py."""

    reserve_fraction: float = _field(0.1, _between(0.0, 0.9))  # of each device's total, left free
    reserve_bytes: int = _field(0, _at_least(0))  # and this much more
    budget_bytes: int = _field(0, _at_least(0))  # most inferd's workers may hold on each device; 0 = no cap
    queue_budget_bytes: int = _field(0, _at_least(0))  # host memory for all queues; 0 = a tenth of the headroom
    check_interval_s: float = _field(5.0, _between(0.05, 3600))  # limits are re-derived this often (and on changes)
    evict_idle: bool = False  # a cold model that does not fit may scale idle ones on its device to zero


@dataclasses.dataclass(frozen=True)
class AuthSection:
    token_file: str = ""  # a bearer token that HTTP and gRPC callers must present; "" = none
    open_health: bool = True  # liveness/readiness answer without the token
    tls_cert: str = ""  # PEM certificate chain and key: both or neither, for HTTP and gRPC
    tls_key: str = ""

    def cross_check(self) -> tuple[str, str] | None:
        if bool(self.tls_cert) != bool(self.tls_key):
            return "tls_cert", "tls_cert and tls_key go together: set both or neither"
        return None


@dataclasses.dataclass(frozen=True)
class LogSection:
    format: str = _field("auto", _one_of("auto", "json", "console", "journal"))
    level: str = _field("info", _one_of("debug", "info", "warning", "error"))


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    server: ServerSection = dataclasses.field(default_factory=ServerSection)
    models: ModelsSection = dataclasses.field(default_factory=ModelsSection)
    defaults: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    memory: MemorySection = dataclasses.field(default_factory=MemorySection)
    auth: AuthSection = dataclasses.field(default_factory=AuthSection)
    log: LogSection = dataclasses.field(default_factory=LogSection)


# ---------------------------------------------------------------------------------------------
# The one loader: mapping -> dataclass, refusing unknown keys, wrong types and bad values.

def _type_name(t) -> str:
    return getattr(t, "__name__", str(t))


def _coerce(value, want, file: str, key: str):
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, bool) or not isinstance(value, want):
        raise ConfigError(file, key, f"expected {_type_name(want)}, got {type(value).__name__} {value!r}")
    return value


def build(cls, data: Mapping[str, Any], file: str, prefix: str = ""):
    """Build dataclass `cls` from `data`, checking every key."""
    if not isinstance(data, Mapping):
        raise ConfigError(file, prefix or "(top level)", f"expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        f = known.get(key)
        if f is None:
            raise ConfigError(file, where, f"unknown key; known keys: {', '.join(known)}")
        want = hints[key]
        if dataclasses.is_dataclass(want):
            values[key] = build(want, value, file, where)
            continue
        values[key] = _coerce(value, want, file, where)
        check = f.metadata.get("check")
        reason = check(values[key]) if check else None
        if reason:
            raise ConfigError(file, where, reason)
    obj = cls(**values)
    cross = getattr(obj, "cross_check", None)
    problem = cross() if cross else None
    if problem:
        key, reason = problem
        raise ConfigError(file, f"{prefix}.{key}" if prefix else key, reason)
    return obj


def _parse_env_value(raw: str, want, name: str):
    try:
        if want is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return want(raw)
    except ValueError:
        raise ConfigError("environment", name, f"expected {_type_name(want)}, got {raw!r}") from None


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """INFERD_<SECTION>_<KEY>=value for every key of every section; any other INFERD_* is refused."""
    wanted = {}
    for section, section_cls in typing.get_type_hints(DaemonConfig).items():
        for key, typ in typing.get_type_hints(section_cls).items():
            wanted[f"INFERD_{section}_{key}".upper()] = (section, key, typ)
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith("INFERD_"):
            continue
        if name not in wanted:
            raise ConfigError("environment", name, "unknown setting (INFERD_<SECTION>_<KEY>)")
        section, key, typ = wanted[name]
        out.setdefault(section, {})[key] = _parse_env_value(raw, typ, name)
    return out


def load_daemon_config(
    path: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> DaemonConfig:
    """TOML file (optional), then INFERD_* environment variables, then `overrides` (CLI flags)."""
    data: dict[str, dict[str, Any]] = {}
    file = str(path) if path else "(defaults)"
    if path:
        data = _read_toml(Path(path))
    layers = [(_env_overrides(os.environ if environ is None else environ), "environment")]
    layers.append((overrides or {}, "command line"))
    for layer, _ in layers:
        for section, values in layer.items():
            if not isinstance(data.setdefault(section, {}), dict):
                raise ConfigError(file, section, "expected a table")
            data[section].update(values)
    return build(DaemonConfig, data, file)


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "(file)", "no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), "(syntax)", str(e)) from None


def read_token(auth: AuthSection) -> str | None:
    """The bearer token from auth.token_file (None when unset); a missing or empty file is refused."""
    if not auth.token_file:
        return None
    try:
        token = Path(auth.token_file).read_text().strip()
    except OSError as e:
        raise ConfigError(auth.token_file, "auth.token_file", f"cannot read the token: {e.strerror}") from None
    if not token:
        raise ConfigError(auth.token_file, "auth.token_file", "the token file is empty")
    return token


# ---------------------------------------------------------------------------------------------
# Per-model config.toml

@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions are served (config.toml `version_policy`):
    { latest = N } (default N = 1), "all", or { specific = [1, 3] }."""

    latest: int = 1
    specific: tuple[int, ...] = ()
    all: bool = False

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific:
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest:]


def _version_policy(value, file: str) -> VersionPolicy:
    key = "version_policy"
    if value == "all":
        return VersionPolicy(all=True)
    if isinstance(value, dict) and len(value) == 1:
        (kind, arg), = value.items()
        if kind == "latest" and isinstance(arg, int) and not isinstance(arg, bool) and arg >= 1:
            return VersionPolicy(latest=arg)
        if kind == "specific" and isinstance(arg, list) and arg and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in arg
        ):
            return VersionPolicy(specific=tuple(arg))
    raise ConfigError(file, key, 'expected { latest = N } (N >= 1), "all", or { specific = [versions] }')


@dataclasses.dataclass(frozen=True)
class PipelineStep:
    """One [[pipeline]] entry: a model, optionally a version, and where its inputs come from
    (input name -> "<earlier step's model>.<output>" or "<pipeline input>")."""

    model: str
    version: str = ""
    inputs: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    settings: ModelSettings
    version_policy: VersionPolicy = VersionPolicy()
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    explicit: frozenset[str] = frozenset()  # keys the model's own file set
    parameters: dict = dataclasses.field(default_factory=dict)  # [parameters]: free-form, for the model's code
    pipeline: tuple[PipelineStep, ...] = ()  # a model made of other models, step by step


def _pipeline(items, file: str) -> tuple[PipelineStep, ...]:
    if not isinstance(items, list) or not items:
        raise ConfigError(file, "pipeline", "expected one or more [[pipeline]] tables (model, version, inputs)")
    steps = []
    for i, item in enumerate(items):
        where = f"pipeline[{i}]"
        if not isinstance(item, dict) or "model" not in item or set(item) - {"model", "version", "inputs"}:
            raise ConfigError(file, where, "expected a table with model and optionally version and inputs")
        model, version, inputs = item["model"], item.get("version", ""), item.get("inputs", {})
        if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
            raise ConfigError(file, f"{where}.model", f"expected a model name ([A-Za-z0-9_.-]+), got {model!r}")
        if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
            version = str(version)
        if not isinstance(version, str) or version and not version.isdigit():
            raise ConfigError(file, f"{where}.version", f"expected a version number, got {version!r}")
        if not isinstance(inputs, dict) or not all(isinstance(v, str) and v for v in inputs.values()):
            raise ConfigError(file, f"{where}.inputs", 'expected a table: input name = "<step model>.<output>" or "<pipeline input>"')
        steps.append(PipelineStep(model, version, tuple(inputs.items())))
    return tuple(steps)


def _tensor_specs(items, file: str, key: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list):
        raise ConfigError(file, key, "expected an array of tables {name, datatype, shape}")
    specs = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or set(item) != {"name", "datatype", "shape"}:
            raise ConfigError(file, where, "expected a table with exactly name, datatype, shape")
        name, datatype, shape = item["name"], item["datatype"], item["shape"]
        if not isinstance(name, str) or not name:
            raise ConfigError(file, f"{where}.name", "expected a non-empty string")
        if datatype not in DATATYPES:
            raise ConfigError(file, f"{where}.datatype", f"unknown datatype {datatype!r}; one of {', '.join(DATATYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
            raise ConfigError(file, f"{where}.shape", "expected an array of integers >= -1 (-1 = dynamic)")
        specs.append(TensorSpec(name, datatype, tuple(shape)))
    return tuple(specs)


def load_model_config(path: Path | None, defaults: ModelSettings) -> ModelConfig:
    """A model's config.toml on top of the daemon's [defaults]; no file means the defaults."""
    if path is None or not path.exists():
        return ModelConfig(defaults)
    file = str(path)
    data = _read_toml(path)
    if "pipeline" in data:
        extra = sorted(set(data) - {"pipeline", "parameters"})
        if extra:
            raise ConfigError(file, extra[0], "a pipeline's config.toml holds only [[pipeline]] steps and [parameters]: "
                              "batching, workers and tensors are its steps' own")
        return ModelConfig(defaults, parameters=data.get("parameters", {}), pipeline=_pipeline(data["pipeline"], file))
    inputs = _tensor_specs(data.pop("inputs"), file, "inputs") if "inputs" in data else ()
    outputs = _tensor_specs(data.pop("outputs"), file, "outputs") if "outputs" in data else ()
    policy = _version_policy(data.pop("version_policy"), file) if "version_policy" in data else VersionPolicy()
    parameters = data.pop("parameters", {})
    if not isinstance(parameters, dict):
        raise ConfigError(file, "parameters", "expected a table of values for the model's code")
    merged = dataclasses.asdict(defaults) | data
    return ModelConfig(build(ModelSettings, merged, file), policy, inputs, outputs, frozenset(data), parameters)
