"""The local side of a model source's mirror: which keys may become files, the manifest of the
files the sync wrote, what a listing changes, and the checks on a downloaded file.

Pure or file-only (no object store here): `s3_sync.py` lists and downloads, this decides.
Everything the sync writes into the models directory is hidden (a name starting with '.') until
it is complete, so the scan never sees half a file: the manifest, and the temporary names that a
download is written to and checked under before it is renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

MANIFEST = ".inferd-source.json"
TEMP_PREFIX = ".inferd-sync-"  # a download in progress; a killed sync's are removed at start
MAX_KEY_BYTES = 1024  # S3's own limit on a key
MAX_PART_BYTES = 255  # a file name on Linux
MAX_DEPTH = 8  # model/version/subdirectories/file: deeper is no model inferd reads
_PLAIN_MD5 = re.compile(r'"?([0-9a-f]{32})"?')  # a single-part upload's ETag (multipart ones end "-N")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One object as listed: what the manifest keeps of each file the sync wrote."""

    etag: str
    size: int
    modified: str = ""  # LastModified, ISO 8601: for people reading the manifest

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Plan:
    """What a listing asks of the directory: files to download (new or changed) and files the
    sync wrote whose objects are gone."""

    download: dict[str, Entry]
    delete: list[str]


def local_path(key: str, prefix: str) -> tuple[str | None, str]:
    """The relative path that object `key` mirrors to, or (None, why not). A key may name only a
    plain file below the models directory: no '..' or '.', no empty part (an absolute or '//'
    key), no hidden part (the manifest's and downloads' names, and what the scan ignores), no
    control characters or backslashes, and within the length and depth bounds."""
    rel = key[len(prefix):] if key.startswith(prefix) else key
    if rel.endswith("/"):
        return None, ""  # a "folder" marker some tools write: nothing to mirror, nothing to say
    if len(key.encode()) > MAX_KEY_BYTES:
        return None, f"key longer than {MAX_KEY_BYTES} bytes"
    parts = rel.split("/")
    if len(parts) > MAX_DEPTH:
        return None, f"more than {MAX_DEPTH} levels deep"
    for part in parts:
        if part in ("", ".", ".."):
            return None, "an empty, '.' or '..' path part"
        if part.startswith("."):
            return None, "a hidden part (starting with '.')"
        if "\\" in part or not part.isprintable():
            return None, "a backslash or control character"
        if len(part.encode()) > MAX_PART_BYTES:
            return None, f"a part longer than {MAX_PART_BYTES} bytes"
    return rel, ""


def read_manifest(root: Path) -> dict[str, Entry]:
    """The files the sync wrote, as they were listed. A missing or unreadable manifest is an
    empty one: files are then downloaded again and none is deleted (the safe side). One
    written from another source (models.source changed) counts: its files are not in this
    source's listing, so they are deleted."""
    try:
        data = json.loads((root / MANIFEST).read_text())
        return {rel: Entry(str(e["etag"]), int(e["size"]), str(e.get("modified", "")))
                for rel, e in data["files"].items() if local_path(rel, "")[0] == rel}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def write_manifest(root: Path, source: str, files: dict[str, Entry]) -> None:
    """Written to a hidden temporary name and renamed: a killed sync leaves the old or the new."""
    temp = root / f"{TEMP_PREFIX}manifest"
    data = {"source": source, "files": {rel: e.to_json() for rel, e in sorted(files.items())}}
    temp.write_text(json.dumps(data, indent=1))
    os.replace(temp, root / MANIFEST)


def plan(listing: dict[str, Entry], manifest: dict[str, Entry], root: Path) -> Plan:
    """Objects that are new, changed (ETag or size), or whose file is missing or of another
    size are downloaded; files the sync wrote whose objects are no longer listed are deleted.
    A model's shallower files come first (its config.toml or config.pbtxt before its version
    directories' weights), so that a model does not load before its configuration arrives."""
    download = {}
    for rel, entry in sorted(listing.items(), key=lambda item: (item[0].split("/")[0], item[0].count("/"), item[0])):
        had = manifest.get(rel)
        if had is None or had.etag != entry.etag or had.size != entry.size or _size(root / rel) != entry.size:
            download[rel] = entry
    return Plan(download, sorted(set(manifest) - set(listing)))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else -1
    except OSError:
        return -1


def check_download(path: Path, listed: Entry, etag_now: str, md5_hex: str) -> str:
    """Why the file just downloaded to `path` is not the object that was listed ("" if it is):
    its size, the object's ETag since the listing, and its MD5 where the ETag is a plain MD5
    (`md5_hex` "": not to be compared, the store's ETag being no digest of the data)."""
    size = _size(path)
    if size != listed.size:
        return f"got {size} bytes, listed as {listed.size}"
    if etag_now != listed.etag:
        return "the object changed while it was downloaded"
    plain = _PLAIN_MD5.fullmatch(listed.etag)
    if plain and md5_hex and md5_hex != plain[1]:
        return "its MD5 does not match its ETag"
    return ""


def temp_name(target: Path) -> Path:
    """A hidden name beside `target` (same directory, same filesystem: the rename is atomic)."""
    return target.with_name(f"{TEMP_PREFIX}{os.urandom(6).hex()}")


def remove_leftovers(root: Path) -> list[str]:
    """A killed sync's temporary files (hidden: never scanned, never removed otherwise); the
    paths removed. Run at start, before the first sync and the first scan."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # not into other hidden things
        for name in filenames:
            if name.startswith(TEMP_PREFIX):
                path = os.path.join(dirpath, name)
                try:
                    os.unlink(path)
                    removed.append(path)
                except OSError:
                    pass
    return removed


def delete_file(root: Path, rel: str) -> None:
    """Delete a mirrored file, then each directory above it that this left empty (never the
    models directory itself, never a directory with anything else in it)."""
    path = root / rel
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    for parent in path.parents:
        if parent == root or root not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break  # not empty (or gone): what is above stays too
