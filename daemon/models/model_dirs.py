"""Models that are directories, as scan.py reads them: a TensorFlow SavedModel
(models/<name>/<version>/model.savedmodel/) and an MLflow model (a directory holding an MLmodel
file: models/<name>/ is version 1, or models/<name>/<version>/ is that version).

Such a model is complete when every file in it is, and its stamp is every file's, so a copy
that is still under way never loads and a replaced or rewritten file reloads it. A file still
written under a temporary name (.part, .tmp) keeps the directory incomplete; hidden files are
not part of the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from inferd.backends.formats import MLMODEL, MODEL_EXTENSIONS, SAVEDMODEL

MAX_FILES = 10_000  # more than any model holds; walking a stray tree stops there
# How deep below the models directory files are watched (inotify) and polled:
# root/<model>/<version>/model.savedmodel/variables/ and an MLflow model's artifacts.
WATCH_DEPTH = 8
_SAVEDMODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


class TooManyFiles(Exception):
    pass


def is_mlflow(directory: Path) -> bool:
    return (directory / MLMODEL).is_file()


def version_entries(vdir: Path, ignored: Callable[[str], bool]) -> tuple[list[Path], str]:
    """What in a version directory is its model: model.<ext> files, a model.savedmodel/
    directory, or the version directory itself when it holds MLmodel; and why the directory
    cannot be served ("" when it can, or when it holds nothing yet)."""
    if is_mlflow(vdir):
        return [vdir], ""
    entries = [f for f in vdir.iterdir() if not ignored(f.name)]
    files = [f for f in entries if f.stem == "model" and f.suffix[1:] in MODEL_EXTENSIONS and f.is_file()]
    files += [f for f in entries if f.name == SAVEDMODEL and f.is_dir()]
    if not files and any(f.name in _SAVEDMODEL_FILES for f in entries):
        return [], (f"{vdir.parent.name}/{vdir.name} holds a SavedModel's files: inferd loads a SavedModel from "
                    f"{vdir.name}/{SAVEDMODEL}/ (Triton's layout); move them there")
    return files, ""


def members(directory: Path, skip: Path | None = None) -> tuple[Path, ...]:
    """The files of a directory model (not `skip`: a config.toml beside an MLflow model's
    files), sorted; raises TooManyFiles past MAX_FILES and OSError when it cannot be read."""
    found: list[Path] = []

    def fail(error: OSError) -> None:
        raise error

    for dirpath, dirnames, filenames in os.walk(directory, onerror=fail):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath, name)
            if name.startswith(".") or path == skip:
                continue
            found.append(path)
            if len(found) > MAX_FILES:
                raise TooManyFiles(f"{directory.name} holds over {MAX_FILES} files")
    return tuple(sorted(found))


def complete(directory: Path, files: tuple[Path, ...], each: Callable[[Path], bool]) -> bool:
    """Every file settled (`each`: the watcher's predicate), the directory too, none still
    being written under a temporary name, and a SavedModel's graph there (a copy that has
    not reached saved_model.pb yet is not a model yet)."""
    if any(f.name.endswith((".tmp", ".part")) for f in files):
        return False
    if directory.name == SAVEDMODEL and not any(f.parent == directory and f.name in _SAVEDMODEL_FILES for f in files):
        return False
    return each(directory) and all(each(f) for f in files)


def stamp(directory: Path, files: tuple[Path, ...]) -> tuple:
    """Each file's path inside the directory, size, mtime and inode: any change changes it."""
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue  # gone meanwhile: the next scan sees the directory without it
        out.append((str(f.relative_to(directory)), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)
