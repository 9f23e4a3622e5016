"""Model files sent in a load request (Triton's repository extension, `file:<path>`
parameters), written into the models directory as a model of their own.

Who may do this: only a daemon whose operator turned `models.accept_model_files` on (off by
default: any caller that reaches the repository API could otherwise fill the disk or replace
models; turn it on only with `auth.token_file` or a private listener). What may be sent:
model files (never code: .py, .pt and .pt2 run code when loaded, and a file the daemon writes
is the daemon's own, which trust.py would trust), at most MAX_FILES of them and MAX_UPLOAD_BYTES
together, at plain relative paths (no absolute path, '..', hidden part or over-long name). The
files and the request's configuration (as config.toml) are written into a hidden staging
directory, which is renamed into place once complete: the watcher never sees half a model. A
model the operator put there is never replaced: only one created this way (it carries a
`.uploaded` marker).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import structlog

from inferd.backends.formats import MLMODEL, MODEL_EXTENSIONS, SAVEDMODEL
from inferd.common.errors import ErrorCode, InferdError, clip, invalid
from inferd.daemon.models.scan import SWAPPING
from inferd.daemon.models.trust import CODE_EXTENSIONS

log = structlog.get_logger("inferd.repository")

MAX_FILES = 64
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
MAX_PATH = 1024
MAX_PART = 255  # NAME_MAX
MARKER = ".uploaded"
_MODEL_FILE = re.compile(r"[0-9]+/model\.([a-z0-9]+)")
_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def check_files(name: str, files: dict[str, bytes]) -> None:
    """Refuses (INVALID_ARGUMENT) what must not be written; nothing is written here."""
    def bad(why: str) -> InferdError:
        return invalid(f"failed to load {clip(name)}: {why}")

    if len(files) > MAX_FILES:
        raise bad(f"{len(files)} files; at most {MAX_FILES}")
    if sum(map(len, files.values())) > MAX_UPLOAD_BYTES:
        raise bad(f"the files hold over {MAX_UPLOAD_BYTES} bytes")
    versions = []
    for path in files:
        parts = path.split("/")
        if (not path or len(path) > MAX_PATH or "\\" in path or "\0" in path
                or any(not p or p.startswith(".") or len(p.encode()) > MAX_PART for p in parts)):
            raise bad(f"file {clip(path)}: expected a plain relative path (no absolute path, '..', "
                      f"hidden part, or part over {MAX_PART} bytes)")
        if Path(path).suffix[1:] in CODE_EXTENSIONS or parts[-1] == MLMODEL or SAVEDMODEL in parts:
            raise bad(f"file {clip(path)} would run code when loaded; inferd runs code only from files "
                      "its operator put in the models directory")
        if parts[0] in ("config.toml", "config.pbtxt"):
            raise bad("the configuration goes in the config parameter, not in a file")
        if (m := _MODEL_FILE.fullmatch(path)) and m.group(1) in MODEL_EXTENSIONS:
            versions.append(path)
    # "1/model.onnx" and "1/model.onnx/x" cannot both be written: one is the other's directory
    folders = {"/".join(path.split("/")[:i]) for path in files for i in range(1, path.count("/") + 1)}
    if clash := sorted(folders.intersection(files)):
        raise bad(f"file {clip(clash[0])} is also a directory of another file")
    if not versions:
        raise bad("the files hold no model file (<version>/model.<ext>, e.g. 1/model.onnx)")


# tempfile.mkdtemp's names below: .upload-<name>-XXXXXXXX, .replaced-<name>-XXXXXXXX
_STAGED = re.compile(r"\.(upload|replaced)-(.+)-[a-z0-9_]{8}")


def remove_leftovers(root: Path) -> None:
    """Staging directories left by a daemon killed mid-load (hidden, so never scanned, and
    never removed otherwise): removed at start, before the first scan. A model killed between
    the two renames of _swap_in is missing and its old copy is in .replaced-*: put back."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return  # (no models directory yet: the scan says so)
    for entry in entries:
        match = _STAGED.fullmatch(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        old, target = Path(entry.path) / match[2], root / match[2]
        if match[1] == "replaced" and (old / MARKER).is_file() and not os.path.lexists(target):
            os.rename(old, target)
            log.warning("restored a model replaced by an interrupted load", model=match[2])
        shutil.rmtree(entry.path, ignore_errors=True)
        log.warning("removed a load's leftover staging directory", path=entry.path)


def write_model(root: Path, name: str, files: dict[str, bytes], config: dict) -> None:
    """Writes `files` and `config` (config.toml keys) as models/<name>/, atomically; raises
    FAILED_PRECONDITION where a model the operator put there has that name. Blocking: run it
    in a thread."""
    target = root / name
    if any((root / f"{name}.{ext}").exists() for ext in MODEL_EXTENSIONS) or (
        os.path.lexists(target) and (target.is_symlink() or not (target / MARKER).is_file())
    ):
        raise InferdError(ErrorCode.FAILED_PRECONDITION,
                          f"failed to load {clip(name)}: the models directory holds a model of that name; files "
                          "in a load request create models, or replace ones created that way")
    staging = Path(tempfile.mkdtemp(prefix=f".upload-{name}-", dir=root))  # hidden: never scanned
    try:
        os.chmod(staging, 0o755)
        for path, content in files.items():
            _write(staging / path, content)
        _write(staging / "config.toml", to_toml(config).encode())
        _write(staging / MARKER, b"")
        _swap_in(root, name, staging, target)
    except OSError as e:
        raise InferdError(ErrorCode.INTERNAL, f"failed to write the model's files: {e.strerror or e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(root: Path, name: str, staging: Path, target: Path) -> None:
    """`staging` becomes `target`; a copy there before ends in `staging` or is removed."""
    with SWAPPING:  # no scan lists the directory meanwhile
        if os.path.lexists(target) and _exchange(staging, target):
            return  # swapped in one step: the old copy is now in staging, which the caller removes
        if not os.path.lexists(target):
            os.rename(staging, target)
            return
        trash = Path(tempfile.mkdtemp(prefix=f".replaced-{name}-", dir=root))
        try:
            os.rename(target, trash / name)  # one created this way: the old copy goes once the new is in place
            try:
                os.rename(staging, target)
            except OSError:
                os.rename(trash / name, target)
                raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap `a` and `b` atomically (Linux renameat2 RENAME_EXCHANGE), so that `b` never is
    missing: a watcher that looked in between two renames would see the model gone and
    unload it. False where the C library or the filesystem cannot (the caller renames twice)."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def to_toml(data: dict) -> str:
    """config.toml text for the override's keys (scalars, [[inputs]]/[[outputs]], [parameters])."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, list | dict)]
    for key in ("inputs", "outputs"):
        for table in data.get(key, []):
            lines += [f"[[{key}]]", *(f"{_key(k)} = {_value(v)}" for k, v in table.items())]
    if data.get("parameters"):
        lines += ["[parameters]", *(f"{_key(k)} = {_value(v)}" for k, v in data["parameters"].items())]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))  # JSON's string escapes are TOML's
