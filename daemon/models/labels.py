"""An output's class labels (config.toml `label_filename`), read when its version loads.

Line i of the file names class i (Triton's convention); classification appends it to each
result. The file must lie inside the model's directory (a symlink that leads out is refused:
its owner chose where the model lives, not what else of the server it shows), be a regular
file, valid UTF-8, and at most MAX_LABEL_BYTES and MAX_LABELS lines: a bad file fails the load
with the reason, it is never half-read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from inferd.scheduler.worker import LoadFailed

MAX_LABEL_BYTES = 8 * 1024 * 1024
MAX_LABELS = 1_000_000


def read_labels(model_dir: Path, label_files: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """Output name -> its labels, for each output that names a label file."""
    return {output: _read(model_dir, relative, output) for output, relative in label_files.items()}


def _read(model_dir: Path, relative: str, output: str) -> tuple[str, ...]:
    shown = f"label file {relative!r} of output {output!r}"
    real_dir = Path(os.path.realpath(model_dir))
    real = Path(os.path.realpath(model_dir / relative))
    if not real.is_relative_to(real_dir):
        raise LoadFailed(f"{shown} leads out of the model's directory (a symlink)")
    try:
        # O_NONBLOCK: a FIFO put there opens at once instead of hanging the load; fstat refuses it.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise LoadFailed(f"{shown} does not exist") from None
    except OSError as e:
        raise LoadFailed(f"{shown} cannot be opened: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise LoadFailed(f"{shown} is not a regular file")
        data = f.read(MAX_LABEL_BYTES + 1)
    if len(data) > MAX_LABEL_BYTES:
        raise LoadFailed(f"{shown} is over {MAX_LABEL_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LoadFailed(f"{shown} is not UTF-8 (byte {e.start})") from None
    lines = text.split("\n")  # (Triton's reading: one label a line; a final newline ends the last)
    if lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_LABELS:
        raise LoadFailed(f"{shown} has over {MAX_LABELS} lines")
    return tuple(line.removesuffix("\r") for line in lines)
