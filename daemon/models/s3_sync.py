"""One synchronisation of an S3 prefix into the models directory, with boto3. Blocking from
start to end: `source.py` runs it in a thread of its own, and the client's connect and read
timeouts (and two attempts per call) bound how long a store that hangs can hold it.

boto3 is imported here only, and this module only once a source is configured: a daemon
without one never needs the package. Credentials come from boto3's default chain (the
environment, the shared config and credentials files, the instance's metadata service); inferd
passes none of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from inferd.daemon.models import source_mirror as mirror
from inferd.daemon.models.source_mirror import Entry

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
           "TokenRefreshRequired", "AllAccessDisabled", "InvalidClientTokenId", "403"}
_CHUNK = 1 << 20
# The manifest is rewritten at most this often during a sync (and at its end): a sync killed in
# between leaves files it does not know it wrote, which are downloaded again and, until then,
# not deleted: the safe side.
_MANIFEST_EVERY_S = 1.0


class SourceDown(Exception):
    """The store could not be listed or read: `result` is "unreachable", "denied" or "error"."""

    def __init__(self, result: str, reason: str):
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclasses.dataclass
class SyncReport:
    listed: int = 0
    downloaded: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (path, bytes)
    deleted: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (key, why): hostile keys
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why): kept as it was


def classify(error: BaseException) -> SourceDown:
    """A boto3/botocore failure as the store's state and a reason that names the problem."""
    if isinstance(error, SourceDown):
        return error
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return SourceDown("denied", f"no usable credentials in the AWS chain: {error}")
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code, message = str(info.get("Code", "")), str(info.get("Message", ""))[:300]
        if code in _DENIED:
            return SourceDown("denied", f"access denied ({code}): {message}")
        if code == "NoSuchBucket":
            return SourceDown("error", f"no such bucket ({message or code})")
        return SourceDown("error", f"the store refused ({code}): {message}")
    if isinstance(error, (ConnectionError, ReadTimeoutError)):
        return SourceDown("unreachable", f"the store did not answer: {error}")
    if isinstance(error, BotoCoreError):
        return SourceDown("error", str(error)[:300])
    return SourceDown("error", f"{type(error).__name__}: {str(error)[:300]}")


class S3Mirror:
    def __init__(self, source: str, root: Path, endpoint_url: str = "", region: str = "",
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 30.0,
                 max_objects: int = 10_000, min_free_bytes: int = 0):
        self.source = source
        self.bucket, _, prefix = source.removeprefix("s3://").partition("/")
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.root = root
        self.max_objects = max_objects
        self.min_free_bytes = min_free_bytes
        self._client_args = {
            "endpoint_url": endpoint_url or None, "region_name": region or None,
            "config": Config(connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
                             retries={"max_attempts": 2, "mode": "standard"}),
        }
        self._client = None
        self._lock = threading.Lock()  # one sync at a time, even one whose awaiter went away

    def sync(self) -> SyncReport:
        """List, download what changed, delete what is gone; raises SourceDown when the store
        cannot be listed (then nothing local changes) or stops answering mid-way."""
        with self._lock:
            try:
                return self._sync()
            except Exception as e:
                raise classify(e) from None

    def _sync(self) -> SyncReport:
        if self._client is None:  # (made here: building a client reads files, off the event loop)
            self._client = boto3.session.Session().client("s3", **self._client_args)
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):  # (EROFS too: the packaged unit mounts it read-only)
            raise SourceDown("error", f"the models directory {self.root} is not writable by the daemon: "
                                      "see docs/object-storage.md (systemd)")
        report = SyncReport()
        listing = self._list(report)
        files = mirror.read_manifest(self.root)
        todo = mirror.plan(listing, files, self.root)
        written = time.monotonic()
        try:
            for rel, entry in todo.download.items():
                why = self._download(rel, entry)
                if why:
                    report.failed.append((rel, why))
                    continue
                report.downloaded.append((rel, entry.size))
                files[rel] = entry
                if time.monotonic() - written > _MANIFEST_EVERY_S:
                    mirror.write_manifest(self.root, self.source, files)
                    written = time.monotonic()
            for rel in todo.delete:
                mirror.delete_file(self.root, rel)
                report.deleted.append(rel)
                del files[rel]
        finally:  # what was done is recorded, even when the store stops answering mid-way
            if report.downloaded or report.deleted:
                mirror.write_manifest(self.root, self.source, files)
        return report

    def _list(self, report: SyncReport) -> dict[str, Entry]:
        listing: dict[str, Entry] = {}
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", ()):
                report.listed += 1
                if report.listed > self.max_objects:
                    raise SourceDown("error", f"more than {self.max_objects} objects under {self.source}: "
                                              "nothing synchronised (models.source_max_objects)")
                rel, why = mirror.local_path(obj["Key"], self.prefix)
                if rel is None:
                    if why:
                        report.skipped.append((obj["Key"], why))
                    continue
                modified = obj.get("LastModified")
                listing[rel] = Entry(obj["ETag"], int(obj["Size"]), modified.isoformat() if modified else "")
        return listing

    def _download(self, rel: str, entry: Entry) -> str:
        """Download one object to a hidden name beside its place, check it, rename it into
        place; "" when done, else why not (the file stays as it was). A store that stops
        answering raises."""
        target = self.root / rel
        free = shutil.disk_usage(self.root).free
        if entry.size > free - self.min_free_bytes:
            return (f"{entry.size} bytes do not fit: {free} free on the models directory's disk, "
                    f"{self.min_free_bytes} kept free (models.source_min_free_bytes)")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"cannot make its directory: {e.strerror or e}"
        temp = mirror.temp_name(target)
        try:
            try:
                answer = self._client.get_object(Bucket=self.bucket, Key=self.prefix + rel, IfMatch=entry.etag)
            except ClientError as e:
                if classify(e).result == "denied":
                    raise
                return f"not downloaded: {classify(e).reason}"  # changed or gone since the listing: the next sync
            md5 = hashlib.md5(usedforsecurity=False)
            with open(temp, "xb") as f:
                for chunk in answer["Body"].iter_chunks(_CHUNK):
                    md5.update(chunk)
                    f.write(chunk)
                    if f.tell() > entry.size:
                        break
                f.flush()
                os.fsync(f.fileno())
            # With SSE-KMS or a customer's key, S3's ETag is no MD5 of the data: size and ETag only.
            keyed = answer.get("SSECustomerAlgorithm") or str(answer.get("ServerSideEncryption", "")).startswith("aws:kms")
            why = mirror.check_download(temp, entry, answer.get("ETag", ""), "" if keyed else md5.hexdigest())
            if why:
                return why
            if target.is_dir():
                return "a directory has its name"
            os.replace(temp, target)
            return ""
        except BotoCoreError:
            raise  # (some are OSErrors too: a store that stopped answering is not a local write's failure)
        except OSError as e:
            return f"cannot write it: {e.strerror or e}"
        finally:
            temp.unlink(missing_ok=True)
