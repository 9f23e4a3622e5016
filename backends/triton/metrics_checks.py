"""What a model's metric calls are checked against (inferd.backends.triton.metrics): Triton's
rules and errors, and inferd's bounds (which the daemon checks the workers' files against too)."""

from __future__ import annotations

import enum
import math
import numbers
import re

MAX_FAMILIES = 64
MAX_METRICS_PER_FAMILY = 1000
MAX_LABELS = 16
MAX_NAME_CHARS = 128  # a family's or a label's name
MAX_LABEL_VALUE_CHARS = 256
MAX_DESCRIPTION_CHARS = 1024
MAX_BUCKETS = 64
MAX_FILE_BYTES = 1 << 20  # the daemon reads no more of a file
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")  # Prometheus' (prometheus-cpp CheckMetricName)
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class TritonModelException(Exception):
    """What Triton's Python backend raises for a refused metric call (pb_utils.TritonModelException)."""


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


def number(value, what: str) -> float:
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{what}(): value must be a number, got {type(value).__name__}")
    return float(value)


def check_family_arguments(name, description, kind) -> None:
    if not isinstance(name, str) or not isinstance(description, str):
        raise TypeError("MetricFamily(): name and description must be strings")
    if not isinstance(kind, MetricKind) or kind not in tuple(MetricKind):
        raise TypeError("MetricFamily(): kind must be MetricFamily.COUNTER, MetricFamily.GAUGE or MetricFamily.HISTOGRAM")
    if len(name) > MAX_NAME_CHARS or not _METRIC_NAME.match(name) or name.startswith("__"):
        raise TritonModelException(f"Error when creating MetricFamily: Invalid metric name {name[:MAX_NAME_CHARS]!r}")
    if name.startswith("inferd_"):
        raise TritonModelException(f"Error when creating MetricFamily: {name!r}: names beginning inferd_ are the daemon's")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise TritonModelException(f"Error when creating MetricFamily: a description may have at most "
                                   f"{MAX_DESCRIPTION_CHARS} characters in inferd")


def checked_labels(labels, kind: MetricKind) -> dict[str, str]:
    failed = "Error when creating Metric"
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise TritonModelException("Failed to create metric. Labels must be a dictionary.")
    if len(labels) > MAX_LABELS:
        raise TritonModelException(f"{failed}: a metric may have at most {MAX_LABELS} labels in inferd")
    for name, value in labels.items():
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not _LABEL_NAME.match(name) or name.startswith("__") \
                or (kind is MetricKind.HISTOGRAM and name == "le"):
            raise TritonModelException(f"{failed}: Invalid label name {str(name)[:MAX_NAME_CHARS]!r}")
        if not isinstance(value, str):
            raise TritonModelException(f"{failed}: label {name!r}: values must be strings, got {type(value).__name__}")
        if len(value) > MAX_LABEL_VALUE_CHARS:
            raise TritonModelException(f"{failed}: label {name!r}: a value may have at most "
                                       f"{MAX_LABEL_VALUE_CHARS} characters in inferd")
    return dict(labels)


def checked_buckets(buckets, kind: MetricKind) -> tuple[float, ...] | None:
    if buckets is None:
        if kind is MetricKind.HISTOGRAM:
            raise TritonModelException("Failed to create metric. Missing required buckets.")
        return None
    if not isinstance(buckets, list):
        raise TritonModelException("Failed to create metric. Buckets must be a list.")
    if kind is not MetricKind.HISTOGRAM:
        raise TritonModelException("Failed to create metric. Unexpected buckets found.")
    bounds = tuple(number(b, "Metric") for b in buckets)
    failed = "Error when creating Metric"
    if len(bounds) > MAX_BUCKETS:
        raise TritonModelException(f"{failed}: a histogram may have at most {MAX_BUCKETS} buckets in inferd")
    if not all(math.isfinite(b) for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise TritonModelException(f"{failed}: Bucket Boundaries must be finite and strictly sorted")
    return bounds
