"""What the models directory holds, as pure functions over snapshots.

Layouts (DESIGN.md):
    models/<name>.<ext>                        version 1 of <name>
    models/<name>/<version>/model.<ext>        full form, with optional models/<name>/config.toml
    models/<name>/config.toml                  a pipeline: [[pipeline]] steps, no version directories
    models/<name>/config.pbtxt                 instead of config.toml: Triton's layout (triton_layout.py)
    models/<name>/<version>/model.savedmodel/  a directory model (model_dirs.py): a SavedModel,
    models/<name>/MLmodel, <version>/MLmodel   or an MLflow model (its directory: version 1)

`scan()` reads the directory into a Snapshot: the versions to serve, chosen by each model's
version policy, keyed by (name, version), with a stamp (size, mtime, inode) of every file so a
changed file is seen as a change. Files that are not complete yet (still written, or changed
too recently) are left out by the `complete` predicate the watcher passes; `settled()` then
keeps the previous entry for them, so a file being rewritten never unloads what serves.
`diff()` says what changed between two snapshots.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path

import structlog

from inferd.backends.formats import MODEL_EXTENSIONS
from inferd.common.errors import ConfigError
from inferd.config.model import CHOOSE_ONE, MODEL_NAME, ModelSettings, VersionPolicy, load_model_config
from inferd.daemon.models import model_dirs
from inferd.daemon.models.triton_layout import platform_problem, read_layout, version_files
from inferd.daemon.models.trust import runs_code, trust_problem

log = structlog.get_logger("inferd.repository")


Key = tuple[str, str]  # (model name, version)
Complete = Callable[[Path], bool]


def ignored(name: str) -> bool:
    """Hidden files and files still being written are never models."""
    return name.startswith(".") or name.endswith((".tmp", ".part"))


def _stamp(path: Path | None) -> tuple:
    if path is None:
        return ()
    try:
        st = path.stat()
    except OSError:
        return ()
    return (st.st_size, st.st_mtime_ns, st.st_ino)


@dataclasses.dataclass(frozen=True)
class Found:
    """One model version as found on disk; `problem` set when it cannot be loaded as laid out."""

    name: str
    version: str
    path: Path | None
    config_path: Path | None = None
    problem: str = ""
    file_stamp: tuple = ()
    config_stamp: tuple = ()
    pipeline: bool = False  # defined by config.toml alone (path is None)
    untrusted: bool = False  # code that others could change: it must not run, nor keep serving
    # A load request's configuration (config.toml keys) over the file's; not part of what
    # the directory says, so a later scan neither compares nor keeps it.
    override: dict | None = dataclasses.field(default=None, compare=False)
    platform: str = dataclasses.field(default="", compare=False)  # what a config.pbtxt names (shown in the index)
    members: tuple[Path, ...] = dataclasses.field(default=(), compare=False)  # a directory model's files (in its stamp)

    @property
    def key(self) -> Key:
        return (self.name, self.version)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.path, *self.members, self.config_path) if p is not None)

    def disk_bytes(self) -> int:
        """The model's size on disk (a directory model's: all its files, as stamped), a worker's
        memory until one is measured. Raises OSError when a file cannot be read."""
        if self.members:
            return sum(entry[1] for entry in self.file_stamp)
        return self.path.stat().st_size if self.path else 0


Snapshot = dict[Key, Found]


def _always(path: Path) -> bool:
    return True


# Held while the daemon swaps a model directory in (upload.py) and while a scan reads: a
# listing of the models directory that runs during a rename in it may miss the renamed entry
# (the model would look removed and be unloaded).
SWAPPING = threading.Lock()


def scan(root: Path, complete: Complete = _always, only: str | None = None) -> Snapshot:
    """The versions to serve of every model under `root` (or of model `only`)."""
    with SWAPPING:
        return _scan(root, complete, only)


def _scan(root: Path, complete: Complete, only: str | None) -> Snapshot:
    found: Snapshot = {}
    defined_by: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if ignored(entry.name):
            continue
        if entry.is_file():
            name, dot, ext = entry.name.rpartition(".")
            if not dot or ext not in MODEL_EXTENSIONS:
                continue
            if only is not None and name != only or not complete(entry):
                continue
            items = [Found(name, "1", entry, file_stamp=_stamp(entry))]
        elif entry.is_dir():
            name = entry.name
            if only is not None and name != only:
                continue
            try:
                items = _scan_model_dir(entry, complete)
            except OSError as e:  # unreadable: the model reports why instead of vanishing
                items = [Found(name, "1", None, problem=f"cannot read {entry.name}: {e.strerror or e}")]
        else:
            continue
        if not items:
            continue
        if not MODEL_NAME.fullmatch(name):
            log.warning("skipping a model with an invalid name", path=str(entry), rule="[A-Za-z0-9_.-]+")
            continue
        if name in defined_by:
            problem = f"both {defined_by[name].name} and {entry.name} define model {name!r}"
            for key in [k for k in found if k[0] == name]:
                del found[key]
            items = [Found(name, "1", None, problem=problem)]
        defined_by[name] = entry
        for item in items:
            found[item.key] = _checked(root, item)
    return found


def _checked(root: Path, item: Found) -> Found:
    """`item`, FAILED in advance when its code could have been changed by someone untrusted."""
    if item.path is None or item.problem or not runs_code(item.path):
        return item
    problem = trust_problem(root, item.path)
    return dataclasses.replace(item, problem=problem, untrusted=True) if problem else item


def _scan_model_dir(directory: Path, complete: Complete) -> list[Found]:
    """The selected versions of one model directory. A version whose file is not complete yet
    is left out (so the policy picks among complete ones); a config file that is not complete
    leaves the whole model out until it is. A config.pbtxt (Triton's) is read by triton_layout."""
    toml, pbtxt = directory / "config.toml", directory / "config.pbtxt"
    if toml.is_file() and pbtxt.is_file():
        return [Found(directory.name, "1", None, pbtxt, f"{directory.name}: {CHOOSE_ONE}", config_stamp=_stamp(pbtxt))]
    config_path = toml if toml.is_file() else pbtxt if pbtxt.is_file() else None
    if config_path is not None and not complete(config_path):
        return []
    config_stamp = _stamp(config_path)
    if config_path != pbtxt and model_dirs.is_mlflow(directory):
        return _whole_directory(directory, config_path, config_stamp, complete)
    layout = read_layout(pbtxt) if config_path == pbtxt else None
    versions: dict[int, list[Path]] = {}
    problems: dict[int, str] = {}
    for vdir in directory.iterdir():
        if not (vdir.is_dir() and vdir.name.isdigit()):
            continue
        if layout is None:
            files, problems[int(vdir.name)] = model_dirs.version_entries(vdir, ignored)
        else:
            files, problems[int(vdir.name)] = version_files(vdir, layout, ignored)
        if files and all(_complete(f, complete) for f in files) or problems.get(int(vdir.name)):
            versions[int(vdir.name)] = files
    if layout is not None:
        pipeline = layout.platform == "ensemble"
        if pipeline or not versions:  # an ensemble's version directory is empty (Triton's layout)
            problem = "" if pipeline else platform_problem(pbtxt)
            return [Found(directory.name, "1", None, pbtxt, problem, config_stamp=config_stamp, pipeline=pipeline,
                          platform=layout.shown)] if pipeline or problem else []
        policy = layout.policy
    else:
        pipeline = _declares_pipeline(config_path) if config_path is not None else False
        if versions and pipeline is True:
            problem = f"{directory.name} has version directories and a [[pipeline]] in config.toml: it must be one or the other"
            return [Found(directory.name, "1", None, config_path, problem, config_stamp=config_stamp, pipeline=True)]
        if not versions:
            if pipeline is False:
                return []  # empty, or still being copied: not a model yet
            return [Found(directory.name, "1", None, config_path, config_stamp=config_stamp, pipeline=True)]
        policy = _policy(config_path)
    found = [_version(directory.name, number, versions[number], problems.get(number, ""), config_path, config_stamp)
             for number in policy.select(list(versions))]
    return [dataclasses.replace(f, platform=layout.shown) for f in found] if layout is not None else found


def _policy(config_path: Path | None) -> VersionPolicy:
    try:
        return load_model_config(config_path, ModelSettings()).version_policy
    except ConfigError:
        # Never drop a serving version over a broken config.toml: every version stays
        # selected, and loading them reports the config's error.
        return VersionPolicy(all=True)


def _version(name: str, number: int, files: list[Path], problem: str, config_path: Path | None, config_stamp: tuple) -> Found:
    if not problem and len(files) != 1:
        problem = f"{name}/{number} must hold exactly one model.<ext> or {model_dirs.SAVEDMODEL}/, found {len(files)}"
    if problem:
        return Found(name, str(number), None, config_path, problem, config_stamp=config_stamp)
    path = files[0]
    if path.is_dir():
        try:
            members = model_dirs.members(path)
        except (model_dirs.TooManyFiles, OSError) as e:
            return Found(name, str(number), None, config_path, _unreadable(path, e), config_stamp=config_stamp)
        return Found(name, str(number), path, config_path, file_stamp=model_dirs.stamp(path, members),
                     config_stamp=config_stamp, members=members)
    return Found(name, str(number), path, config_path, file_stamp=_stamp(path), config_stamp=config_stamp)


def _whole_directory(directory: Path, config_path: Path | None, config_stamp: tuple, complete: Complete) -> list[Found]:
    """An MLflow model dropped in as models/<name>/: version 1, once all of it is there."""
    name = directory.name
    try:
        members = model_dirs.members(directory, skip=config_path)
    except (model_dirs.TooManyFiles, OSError) as e:
        return [Found(name, "1", None, config_path, _unreadable(directory, e), config_stamp=config_stamp)]
    if not model_dirs.complete(directory, members, complete):
        return []
    return [Found(name, "1", directory, config_path, file_stamp=model_dirs.stamp(directory, members),
                  config_stamp=config_stamp, members=members)]


def _complete(path: Path, complete: Complete) -> bool:
    """A model file settled, or every file of a directory model (unreadable: the scan says why)."""
    if not path.is_dir():
        return complete(path)
    try:
        return model_dirs.complete(path, model_dirs.members(path), complete)
    except (model_dirs.TooManyFiles, OSError):
        return True


def _unreadable(path: Path, error: Exception) -> str:
    return str(error) if isinstance(error, model_dirs.TooManyFiles) else f"cannot read {path.name}: {error.strerror or error}"


def _declares_pipeline(config: Path) -> bool | None:
    """Whether config.toml has [[pipeline]] steps; None when it does not parse. A directory with
    no versions and such a config loads as a pipeline that reports the error, and a pipeline
    that serves keeps serving meanwhile."""
    try:
        with config.open("rb") as f:
            return "pipeline" in tomllib.load(f)
    except FileNotFoundError:
        return False  # removed meanwhile
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # unreadable: loading it reports why


def settled(previous: Snapshot, current: Snapshot, complete: Complete) -> Snapshot:
    """`current`, except that a version whose files are in flux keeps its `previous` entry: one
    being rewritten is left out of `current` by scan(), and one removed moments ago may be a
    delete-then-copy replace, so neither counts until its files have settled."""
    out = dict(current)
    for key, old in previous.items():
        if key not in current and not all(complete(p) for p in old.files):
            out[key] = old
    return out


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str  # "added" | "removed" | "file changed" | "config changed"
    found: Found  # the new entry (the old one for "removed")


def diff(old: Snapshot, new: Snapshot) -> list[Change]:
    """What turned `old` into `new`, per (model, version)."""
    changes = []
    for key, found in new.items():
        before = old.get(key)
        if before is None:
            changes.append(Change("added", found))
        elif (before.path, before.file_stamp, before.problem) != (found.path, found.file_stamp, found.problem):
            changes.append(Change("file changed", found))
        elif (before.config_path, before.config_stamp) != (found.config_path, found.config_stamp):
            changes.append(Change("config changed", found))
    changes.extend(Change("removed", found) for key, found in old.items() if key not in new)
    return changes


def model_names(snapshot: Snapshot) -> set[str]:
    return {name for name, _ in snapshot}


def file_stamps(root: Path) -> dict[Path, tuple]:
    """Every file under `root` down to version directories and into directory models, with its
    stamp: polling compares these to see what changed and when."""
    stamps: dict[Path, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= model_dirs.WATCH_DEPTH:
            dirnames.clear()
        for name in filenames:
            path = Path(dirpath, name)
            stamps[path] = _stamp(path)
    return stamps
