"""Whether a model's code may run as the daemon's user.

A Python model is code, and a PyTorch file is a pickle (unpickling runs code), so such a file
runs only where nobody but a trusted user could have changed it: the file and every directory
from the models directory down to it must belong to root or the daemon's user and be writable
by neither their group nor other users. A symlink that leads out of the models directory is not
followed for code. ONNX files are data: they are not checked here.

Reasons name paths relative to the models directory: they are shown to callers.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from inferd.common.redaction import hide_paths

# Extensions whose loading runs code from the file: Python source, and torch's pickles
# (TorchScript .pt and torch.export .pt2 archives hold pickled data), and scikit-learn's pickles.
CODE_EXTENSIONS = frozenset({"py", "pt", "pt2", "joblib", "pkl", "pickle"})
_FIX = "chown it to root or the daemon's user and chmod go-w"


def runs_code(path: Path) -> bool:
    return path.suffix[1:] in CODE_EXTENSIONS


def trust_problem(root: Path, path: Path) -> str:
    """'' when only trusted users can change the code `path` loads; else why it must not run.
    For a full-form model.py the whole version directory counts (modules beside it import)."""
    real_root = Path(os.path.realpath(root))
    shown = _relative(root, path)
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(real_root):
        return f"{shown} leads out of the models directory (a symlink); code is only run from inside it"
    try:
        chain = [real_root, *reversed(real.parents[:len(real.relative_to(real_root).parts) - 1]), real]
        for p in chain:
            if why := _untrusted(os.lstat(p)):
                return _refusal(real_root, p, why)
        if path.name == "model.py" and real.parent != real_root:
            return _version_dir_problem(real_root, real.parent)
    except OSError as e:
        return f"cannot check who may change {shown}: {e.strerror or e}"
    return ""


def _version_dir_problem(real_root: Path, directory: Path) -> str:
    """Every file and directory under a model.py's version directory (what it may import)."""
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p.is_symlink() and not Path(os.path.realpath(p)).is_relative_to(real_root):
                return f"{_relative(real_root, p)} leads out of the models directory (a symlink); code is only run from inside it"
            if why := _untrusted(os.lstat(p)):
                return _refusal(real_root, p, why)
    return ""


def _untrusted(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return ""  # a link's own bits mean nothing; where it leads is checked
    if st.st_uid not in (0, os.geteuid()):
        return f"belongs to uid {st.st_uid}, not to root or the daemon's user"
    if st.st_mode & stat.S_IWOTH:
        return "is writable by other users"
    if st.st_mode & stat.S_IWGRP:
        return "is writable by its group"
    return ""


def _refusal(real_root: Path, p: Path, why: str) -> str:
    return f"{_relative(real_root, p)} {why}; refusing to run code that others could change ({_FIX})"


def _relative(root: Path, p: Path) -> str:
    """`p` as callers may see it: relative to the models directory."""
    for base in (root, Path(os.path.realpath(root))):
        if p == base:
            return "the models directory"
        if p.is_relative_to(base):
            return str(p.relative_to(base))
    return p.name


def redact(text: str, root: Path) -> str:
    """`text` with the paths in it as callers may see them: relative to the models directory,
    and other server paths reduced to their last part."""
    return hide_paths(text, (str(root), os.path.realpath(root)))
