"""The daemon's configuration: its TOML file, INFERD_* environment overrides and CLI overrides.

Every section is a dataclass; one small loader checks keys, types and values and refuses
anything else with the file, the key and the reason (ConfigError).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import stat
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferd.common.errors import ConfigError
from inferd.config.loader import at_least, between, build, field, one_of, read_toml, type_name
from inferd.config.model import ModelSettings


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


def _server_name(value: str) -> str | None:
    if 0 < len(value) <= 64 and value.isascii() and value.isprintable():
        return None
    return "must be 1 to 64 printable ASCII characters"


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
    return os.path.join(fallback_socket_dir(), "inferd.sock")


def fallback_socket_dir() -> str:
    """Where "auto" puts the socket without a runtime directory: in /tmp, where any local user
    could have made it first, so it is used only while private_dir_problem() finds nothing."""
    return f"/tmp/inferd-{os.getuid()}"


def private_dir_problem(directory: str) -> str | None:
    """Why `directory` is not this user's private directory (None: it is, or it does not
    exist). In a directory that another user owns or may write to, they could put their own
    socket in place of the daemon's and read every request and forge every answer."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot check {directory}: {e.strerror or e}"
    fix = "remove it (or set server.socket to a path in a private directory)"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory (a symlink or a file): {fix}"
    if st.st_uid != os.geteuid():
        return f"{directory} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): {fix}"
    if stat.S_IMODE(st.st_mode) != 0o700:
        return f"{directory} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700: chmod 0700 it, or {fix}"
    return None


@dataclasses.dataclass(frozen=True)
class ServerSection:
    http: str = field("127.0.0.1:8000", _address)
    grpc: str = field("127.0.0.1:8001", _address)
    socket: str = "auto"  # see socket_path()
    http_socket: str = ""
    socket_group: str = "inferd"
    name: str = field("inferd", _server_name)  # server metadata's name (MLServer's server_name)
    drain_timeout_s: float = field(30.0, between(0, 3600))
    max_request_bytes: int = field(64 * 1024 * 1024, at_least(1024))
    # What one request may cost to decode on the event loop (see docs/operations.md):
    max_structured_bytes: int = field(1024 * 1024, at_least(1024))  # JSON; a gRPC message but its raw contents
    max_value_elements: int = field(65536, at_least(1))  # tensor elements sent one by one (JSON, typed, BYTES)
    # A JSON body over max_structured_bytes (to max_request_bytes) is decoded in a decoder process:
    json_decoders: int = field(1, between(0, 64))  # such processes, started on need; 0: such a body gets 413
    json_decode_queue: int = field(2, between(0, 1024))  # big bodies held beyond those decoding; past it 503
    json_decode_timeout_s: float = field(30.0, between(0.1, 3600))  # a decode past it: 413, its process killed
    json_decode_memory_bytes: int = field(1 << 30, at_least(16 << 20))  # a decoder's memory beyond its own: 413
    # Connection limits, per listener (docs/operations.md explains each). 0 turns a timeout off.
    max_connections: int = field(1000, at_least(1))  # at the cap the longest-idle one is closed, else a new one refused
    header_timeout_s: float = field(10.0, between(0, 3600))  # an HTTP request's head must arrive within this
    body_timeout_s: float = field(60.0, between(0, 3600))  # an HTTP body, a Unix-socket frame
    idle_timeout_s: float = field(120.0, between(0, 86400))  # a connection with no request in progress
    write_buffer_bytes: int = field(1024 * 1024, at_least(16 * 1024))  # unread replies past this: not read
    http2_max_streams: int = field(100, at_least(1))  # concurrent gRPC calls per connection (SETTINGS)
    http2_max_pings_per_s: float = field(5.0, at_least(0))  # PINGs a gRPC client may send (bursts of 10 s' worth)


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket naming rules


def _source_url(value: str) -> str | None:
    if value == "":
        return None
    bucket, _, prefix = value.removeprefix("s3://").partition("/")
    if not value.startswith("s3://") or not _BUCKET.fullmatch(bucket):
        return f"expected \"\" or s3://bucket[/prefix] with an S3 bucket name, got {value[:200]!r}"
    if len(prefix) > 512 or not prefix.isprintable() or "//" in prefix or prefix.startswith("/"):
        return f"the prefix must be printable, at most 512 characters, with no empty parts; got {prefix[:200]!r}"
    return None


def _endpoint_url(value: str) -> str | None:
    if value == "" or (re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value) and len(value) <= 512):
        return None
    return f"expected \"\" (AWS's endpoint) or an http:// or https:// URL, got {value[:200]!r}"


def _region(value: str) -> str | None:
    return None if re.fullmatch(r"[a-z0-9-]{0,32}", value) else f"expected a region name like eu-west-1, got {value[:64]!r}"


@dataclasses.dataclass(frozen=True)
class ModelsSection:
    dir: str = "/var/lib/inferd/models"
    control: str = field("watch", one_of("watch", "poll", "explicit"))
    settle_ms: int = field(500, between(0, 600_000))
    poll_interval_s: float = field(2.0, between(0.05, 3600))  # control = "poll" only
    max_concurrent_loads: int = field(4, between(1, 256))  # model loads that start workers at once
    accept_model_files: bool = False  # a load request may carry model files (docs/triton-features.md)
    # Models from object storage, mirrored into dir (docs/object-storage.md); credentials come
    # from the standard AWS chain only, never from this file.
    source: str = field("", _source_url)  # "" or "s3://bucket[/prefix]"; listed every poll_interval_s
    endpoint_url: str = field("", _endpoint_url)  # "" = AWS's; or an S3-compatible store's http(s) URL
    region: str = field("", _region)  # "" = the AWS chain's (AWS_REGION, ~/.aws/config)
    source_connect_timeout_s: float = field(5.0, between(0.1, 300))
    source_read_timeout_s: float = field(30.0, between(0.1, 3600))  # per socket read: a hung store's bound
    source_max_objects: int = field(10_000, between(1, 1_000_000))  # more under the prefix: the sync is refused
    source_min_free_bytes: int = field(256 * 1024 * 1024, at_least(0))  # an object must leave this much disk free

    def cross_check(self) -> tuple[str, str] | None:
        if self.source and importlib.util.find_spec("boto3") is None:  # (found, not imported: start stays quick)
            return "source", "an s3:// source needs boto3: install inferd[s3] (pip install 'inferd[s3]')"
        return None


@dataclasses.dataclass(frozen=True)
class MemorySection:
    """How much of each device (the host, every GPU) the models may use; see scheduler/limits.py."""

    reserve_fraction: float = field(0.1, between(0.0, 0.9))  # of each device's total, left free
    reserve_bytes: int = field(0, at_least(0))  # and this much more
    budget_bytes: int = field(0, at_least(0))  # most inferd's workers may hold on each device; 0 = no cap
    queue_budget_bytes: int = field(0, at_least(0))  # host memory for all queues; 0 = a tenth of the headroom
    check_interval_s: float = field(5.0, between(0.05, 3600))  # limits are re-derived this often (and on changes)
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
    format: str = field("auto", one_of("auto", "json", "console", "journal"))
    level: str = field("info", one_of("debug", "info", "warning", "error"))


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    server: ServerSection = dataclasses.field(default_factory=ServerSection)
    models: ModelsSection = dataclasses.field(default_factory=ModelsSection)
    defaults: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    memory: MemorySection = dataclasses.field(default_factory=MemorySection)
    auth: AuthSection = dataclasses.field(default_factory=AuthSection)
    log: LogSection = dataclasses.field(default_factory=LogSection)


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
        raise ConfigError("environment", name, f"expected {type_name(want)}, got {raw!r}") from None


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
        data = read_toml(Path(path))
    layers = [(_env_overrides(os.environ if environ is None else environ), "environment")]
    layers.append((overrides or {}, "command line"))
    for layer, _ in layers:
        for section, values in layer.items():
            if not isinstance(data.setdefault(section, {}), dict):
                raise ConfigError(file, section, "expected a table")
            data[section].update(values)
    return build(DaemonConfig, data, file)


def read_token(auth: AuthSection) -> str | None:
    """The bearer token from auth.token_file (None when unset); a missing or empty file, or
    one that other users may read, is refused."""
    if not auth.token_file:
        return None
    try:
        others_may_use = os.stat(auth.token_file).st_mode & (stat.S_IROTH | stat.S_IWOTH)
        token = Path(auth.token_file).read_text().strip()
    except OSError as e:
        raise ConfigError(auth.token_file, "auth.token_file", f"cannot read the token: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(auth.token_file, "auth.token_file", "the token file is not UTF-8 text") from None
    if others_may_use:
        raise ConfigError(auth.token_file, "auth.token_file",
                          f"the token file is readable or writable by other users: chmod o-rwx {auth.token_file}")
    if not token:
        raise ConfigError(auth.token_file, "auth.token_file", "the token file is empty")
    return token
