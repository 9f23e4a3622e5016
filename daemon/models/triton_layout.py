"""A Triton model directory (config.pbtxt) as scan.py reads it: which file of a version
directory is the model (`model.<ext>` for the platform, or the config's
default_model_filename), which versions the config's version_policy serves, and why a version
cannot be served (a platform inferd does not run, a file that does not fit the platform).

    models/<name>/config.pbtxt
    models/<name>/<version>/model.onnx | model.pt | model.py      (or default_model_filename)
    models/<name>/1/                                             an ensemble's (empty) version
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from inferd.backends.formats import MODEL_EXTENSIONS
from inferd.common.errors import ConfigError
from inferd.config.model import ModelSettings, VersionPolicy, model_config_from
from inferd.config.triton_config import (
    MODEL_FILES,
    OTHER_FILES,
    plain_file_name,
    platform_of,
    read_pbtxt,
    to_toml,
    unsupported,
)


@dataclasses.dataclass(frozen=True)
class Layout:
    platform: str = ""  # "" when config.pbtxt names none (the file's extension decides) or is unreadable
    default_file: str = ""
    policy: VersionPolicy = VersionPolicy(all=True)  # (all: a broken config's error is reported at load)
    shown: str = ""  # the platform (or backend) the file names, supported or not: what the index shows


def read_layout(config: Path) -> Layout:
    """What config.pbtxt says of the files. A config that does not map still yields what it
    can: every version is kept, and loading one reports the error (a serving version is never
    dropped over a broken config)."""
    try:
        raw = read_pbtxt(config)
    except ConfigError:
        return Layout()
    shown = raw.get("platform") or raw.get("backend") or ""
    try:
        platform = platform_of(raw, str(config))
    except ConfigError:
        return Layout(shown=shown)
    default_file = raw.get("default_model_filename", "")
    default_file = default_file if plain_file_name(default_file) else ""  # (else loading it reports why)
    if platform == "ensemble":
        return Layout(platform, default_file, shown=shown)
    try:
        policy = model_config_from(to_toml(raw, config.parent.name, str(config)), str(config), ModelSettings()).version_policy
    except ConfigError:
        policy = VersionPolicy(all=True)
    return Layout(platform, default_file, policy, shown)


def platform_problem(config: Path) -> str:
    """The reason a config.pbtxt's platform cannot be served ("" when it can, or when the
    config's own error will say more at load)."""
    try:
        platform_of(read_pbtxt(config), str(config))
    except ConfigError as e:
        return f"{config.parent.name}/config.pbtxt: {e.reason}" if "not supported by inferd" in e.reason else ""
    return ""


def version_files(vdir: Path, layout: Layout, ignored) -> tuple[list[Path], str]:
    """The model files of one version directory, and the reason it cannot be served ("" if it can)."""
    if layout.default_file:
        path = vdir / layout.default_file
        return ([path], "") if path.is_file() else ([], "")
    entries = [f for f in vdir.iterdir() if not ignored(f.name)]
    files = [f for f in entries if f.stem == "model" and f.suffix[1:] in MODEL_EXTENSIONS and f.is_file()]
    wanted = MODEL_FILES.get(layout.platform)
    if wanted is not None and files and all(f.name != wanted for f in files):
        return [], (f"{vdir.parent.name}/{vdir.name}: platform {layout.platform} needs {wanted}, "
                    f"found {', '.join(sorted(f.name for f in files))}")
    if wanted is not None:
        files = [f for f in files if f.name == wanted]
    if not files:
        other = sorted(OTHER_FILES[f.name] for f in entries if f.name in OTHER_FILES)
        if other:
            return [], f"{vdir.parent.name}/{vdir.name}: {unsupported(other[0])}"
    return files, ""
