"""Which backend runs a model: by config.toml's `backend`, else the file's extension, else, for
the extensions two worlds share (.json, .txt), the file's content. Imported by the daemon (no
framework here): it reads at most a bounded part of a file, so a multi-GB file costs the same
as a small one.

    .onnx .pt .pt2 .py                 onnx, pt, pt2, py (the names config.toml's backend uses)
    .joblib .pkl .pickle .skops        sklearn
    .ubj                               xgboost
    .json                              xgboost, when the file is XGBoost's model (an object whose
                                       keys are "learner" and "version")
    .txt                               lightgbm, when the file is LightGBM's text model (a "tree"
                                       line, then "version=v<N>")
    .cbm                               catboost
    .keras, a model.savedmodel/ dir    tensorflow
    a directory holding MLmodel        mlflow
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# Extension -> the backends that read such files (the first decides unless config.toml says).
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx",), "pt": ("pt",), "pt2": ("pt2",), "py": ("py",),
    "joblib": ("sklearn",), "pkl": ("sklearn",), "pickle": ("sklearn",), "skops": ("sklearn",),
    "ubj": ("xgboost",), "json": ("xgboost",), "txt": ("lightgbm",), "cbm": ("catboost",),
    "keras": ("tensorflow",),
}
MODEL_EXTENSIONS = tuple(EXTENSIONS)
SAVEDMODEL = "model.savedmodel"  # a TensorFlow SavedModel directory in a version directory (Triton's name)
MLMODEL = "MLmodel"  # the file that makes a directory an MLflow model
DIRECTORY_BACKENDS = ("tensorflow", "mlflow")

# A JSON file up to this size is parsed whole (exact reasons); a bigger one is judged by its
# first and last bytes: XGBoost writes its keys sorted, "learner" first and "version" last.
JSON_PARSE_BYTES = 4 << 20
HEAD_BYTES, TAIL_BYTES = 4096, 256
_XGBOOST_HEAD = re.compile(rb'\s*\{\s*"learner"\s*:')
_XGBOOST_TAIL = re.compile(rb'"version"\s*:\s*\[\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\]\s*\}\s*$')
# What other frameworks write as .json, said in the reason (none of them loads here).
_OTHER_JSON = (
    ({"oblivious_trees", "model_info"}, "a CatBoost model saved as JSON: save it as .cbm (format='cbm') instead"),
    ({"tree_info", "max_feature_idx"}, "a LightGBM model dump (dump_model): save it with save_model to a .txt instead"),
    ({"class_name", "config"}, "a Keras architecture (to_json), which has no weights: save the model as .keras instead"),
)


class FormatError(Exception):
    """The file is none of the formats its extension stands for; the message says what it is."""


def backend_names(registered) -> list[str]:
    """Every name config.toml's `backend` may give: the registered backends and those the
    formats above name (a framework's backend may be missing from this build)."""
    named = {b for kinds in EXTENSIONS.values() for b in kinds}
    return sorted(set(registered) | named | set(DIRECTORY_BACKENDS))


def candidates(path: Path) -> tuple[str, ...]:
    """The backends that read `path` by its name and kind, before its content is looked at."""
    if path.is_dir():
        if (path / MLMODEL).is_file():
            return ("mlflow",)
        return ("tensorflow",) if path.name == SAVEDMODEL else ()
    return EXTENSIONS.get(path.suffix[1:], ())


def detect(path: Path, declared: str = "") -> str:
    """The backend that runs `path` (a model file or directory): `declared` (config.toml's
    `backend`) where it is one that reads such files, else by extension and, for .json and
    .txt, by content. Raises FormatError saying what the file is otherwise. Blocking (it may
    read a few KiB, or a small JSON file whole): run it in a thread."""
    kinds = candidates(path)
    what = f"{path.name}/" if path.is_dir() else f"a .{path.suffix[1:]} file"
    if not kinds and path.is_dir():
        raise FormatError(f"{path.name} is a directory that is neither a TensorFlow SavedModel ({SAVEDMODEL}) "
                          f"nor an MLflow model (it holds no {MLMODEL} file)")
    if not kinds:
        raise FormatError(f"{path.name}: no backend reads {what}")
    if declared:
        if declared not in kinds:
            raise FormatError(f"config.toml says backend = {declared!r}, but {what} is read by "
                              f"{' or '.join(kinds)}")
        return declared
    if path.is_file() and path.suffix == ".json":
        _check_xgboost_json(path)
    elif path.is_file() and path.suffix == ".txt":
        _check_lightgbm_text(path)
    return kinds[0]


def _check_xgboost_json(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        raise FormatError(f"{path.name} is an empty .json file, not an XGBoost model")
    if size > JSON_PARSE_BYTES:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read(TAIL_BYTES)
        if not _XGBOOST_HEAD.match(head):
            raise FormatError(f"{path.name} is a .json file that is not an XGBoost model (it does not begin with "
                              "the 'learner' key); set backend in config.toml if it is one")
        if not _XGBOOST_TAIL.search(tail):
            raise FormatError(f"{path.name} is a .json file that is not an XGBoost model (it does not end with "
                              "the 'version' key: cut short?); set backend in config.toml if it is one")
        return
    try:
        data = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise FormatError(f"{path.name} is a .json file that is not text, so not an XGBoost model") from None
    except ValueError as e:
        raise FormatError(f"{path.name} is a .json file that is not valid JSON ({_first_line(e)}), "
                          "so not an XGBoost model") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path.name} is JSON but not an object ({type(data).__name__}), so not an XGBoost model")
    for keys, said in _OTHER_JSON:
        if keys <= data.keys():
            raise FormatError(f"{path.name} is {said}")
    missing = [k for k in ("learner", "version") if k not in data]
    if missing:
        raise FormatError(f"{path.name} is a .json file that is not an XGBoost model (no {missing[0]!r} key)")


def _check_lightgbm_text(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if not head:
        raise FormatError(f"{path.name} is an empty .txt file, not a LightGBM model")
    text = head.decode(errors="replace")  # (the read may end inside a character)
    lines = text.splitlines()
    if "\0" in text or text.count("\ufffd") > 1:
        raise FormatError(f"{path.name} is a .txt file that is not text, so not a LightGBM model")
    if lines[0].strip() == "tree" and any(re.fullmatch(r"version=v\d+", line.strip()) for line in lines[1:4]):
        return
    if lines[0].startswith("booster[0]") or re.match(r"0:\[f\d+", lines[0]):
        raise FormatError(f"{path.name} is an XGBoost text dump (dump_model), which cannot be loaded: "
                          "save the model with save_model to a .json or .ubj instead")
    raise FormatError(f"{path.name} is a .txt file that is not a LightGBM model (it does not begin with a "
                      "'tree' line and a 'version=v<N>' line)")


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:120]
