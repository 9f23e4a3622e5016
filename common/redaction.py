"""Server paths out of the texts callers read (errors, reasons in the repository index): a
path under one of the given roots is shown relative to it, any other absolute path by its last
part. The log keeps the full text."""

from __future__ import annotations

import re
from collections.abc import Iterable

# An absolute path: "/" after nothing path-like (not a URL's "//", not the "/" of "a/b" or "3/4").
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/[^\s'\"(),;:\[\]<>=]+")


def hide_paths(text: str, roots: Iterable[str] = (), root_name: str = "the models directory") -> str:
    bases = sorted({root.rstrip("/") for root in roots if root.rstrip("/")}, key=len, reverse=True)

    def shown(match: re.Match) -> str:
        path = match.group(0)
        for base in bases:
            if path.rstrip("/") == base:
                return root_name
            if path.startswith(base + "/"):
                return path[len(base) + 1:]
        return path.rstrip("/").rpartition("/")[2] or path
    return _ABSOLUTE.sub(shown, text)
