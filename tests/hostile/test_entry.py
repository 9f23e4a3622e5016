"""A local user against the daemon's files and sockets: model code that someone else could have
changed, a symlink out of the models directory, a token file others can read, the /tmp socket
directory made first by another user, a socket swapped for a symlink. Real users (useradd),
real chown/chmod, the real daemon and client."""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from daemon_process import DaemonProcess
from waiting import eventually

from inferd.client import Client, InferdClientError

INTRUDER = "inferd-intruder"
FAST = {"INFERD_MODELS_SETTLE_MS": "100"}
CODE = '''
class Model:
    inputs = [{"name": "x", "datatype": "INT64", "shape": [-1]}]
    outputs = [{"name": "y", "datatype": "INT64", "shape": [-1]}]

    def infer(self, inputs):
        return {"y": inputs["x"] + 1}
'''


def intruder() -> pwd.struct_passwd:
    """Another local user (made once: useradd)."""
    try:
        return pwd.getpwnam(INTRUDER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER], check=True)
        return pwd.getpwnam(INTRUDER)


@pytest.fixture(autouse=True)
def as_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: makes users and changes owners")


def python_model(root: Path, name: str) -> Path:
    path = root / name / "1" / "model.py"
    path.parent.mkdir(parents=True)
    path.write_text(CODE)
    return path


def index(d: DaemonProcess) -> dict[str, dict]:
    request = urllib.request.Request(d.url + "/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    assert str(d.models) not in text and "/tmp/" not in text  # no server paths to callers
    return {row["name"]: row for row in json.loads(text)}




@pytest.mark.parametrize("control", ["watch", "poll"])
async def test_code_that_others_could_change_is_failed_with_the_reason_and_fixing_it_reloads(tmp_path, control):
    other = intruder()
    models = tmp_path / "models"
    python_model(models, "good")
    foreign = python_model(models, "foreign")
    os.chown(foreign, other.pw_uid, other.pw_gid)  # the file belongs to another user
    shared = python_model(models, "shared")
    shared.chmod(0o664)  # group-writable
    open_dir = python_model(models, "opendir")
    open_dir.parent.parent.chmod(0o777)  # the model's directory (above the version) is writable by all
    outside = tmp_path / "elsewhere" / "evil.py"
    outside.parent.mkdir()
    outside.write_text(CODE)  # root's own file, 0644: only where it lies is wrong
    (models / "linked.py").symlink_to(outside)
    env = {**FAST, "INFERD_MODELS_CONTROL": control, "INFERD_MODELS_POLL_INTERVAL_S": "0.2"}
    with DaemonProcess(models, env=env) as d, Client(socket=d.socket_path) as c:
        rows = index(d)
        assert rows["good"]["state"] == "READY"
        assert c.infer("good", {"x": [1, 2]})["y"].tolist() == [2, 3]
        expected = {
            "foreign": f"foreign/1/model.py belongs to uid {other.pw_uid}, not to root or the daemon's user",
            "shared": "shared/1/model.py is writable by its group",
            "opendir": "opendir is writable by other users",
            "linked": "linked.py leads out of the models directory",
        }
        for name, reason in expected.items():
            assert rows[name]["state"] == "FAILED", rows[name]
            assert reason in rows[name]["reason"], rows[name]
            with pytest.raises(InferdClientError) as e:
                c.infer(name, {"x": [1]})
            assert e.value.code == "unavailable" and reason in e.value.message
        # No code of theirs ran: no worker was started for them.
        started = {e["model"] for e in d.events("model loaded")}
        assert started == {"good"}

        # Fixing permissions (no change to the content) reloads like any other fix.
        os.chown(foreign, 0, 0)
        shared.chmod(0o644)
        open_dir.parent.parent.chmod(0o755)
        for name in ("foreign", "shared", "opendir"):
            await eventually(lambda name=name: index(d)[name]["state"] == "READY", 30, f"{name} to load once fixed")
            assert c.infer(name, {"x": [1]})["y"].tolist() == [2]

        # A serving model whose file becomes writable by others stops serving at once.
        (models / "good" / "1" / "model.py").chmod(0o666)
        await eventually(lambda: index(d)["good"]["state"] == "FAILED", 30, "good to fail once others may write it")
        with pytest.raises(InferdClientError):
            c.infer("good", {"x": [1]})


def test_a_token_file_others_can_read_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o644)
    config = tmp_path / "inferd.toml"
    config.write_text(f'[auth]\ntoken_file = "{token}"\n')
    command = [sys.executable, "-m", "inferd.daemon", "serve", "--config", str(config), "--models", str(tmp_path),
               "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--socket", str(tmp_path / "s.sock")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert str(token) in done.stderr and f"chmod o-rwx {token}" in done.stderr
    token.chmod(0o600)  # fixed: it starts
    with DaemonProcess(tmp_path, config=config):
        pass


class FallbackDirectory:
    """/tmp/inferd-<uid> as another local user would make it first; `listen()` puts their own
    socket inside (recording whoever connects)."""

    def __init__(self):
        self.path = Path(f"/tmp/inferd-{os.getuid()}")
        if os.path.lexists(self.path):
            pytest.skip(f"{self.path} exists already (a daemon of this user may be using it)")
        self.other = intruder()
        self.path.mkdir(mode=0o755)
        os.chown(self.path, self.other.pw_uid, self.other.pw_gid)
        self.captured = 0
        self.server: socket.socket | None = None

    def listen(self) -> None:
        other = self.other
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path / "inferd.sock"))
        os.chown(self.path / "inferd.sock", other.pw_uid, other.pw_gid)
        self.server.listen()
        self.server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.captured += 1
            conn.close()

    def remove(self) -> None:
        if self.server is not None:
            self._stop.set()
            self._thread.join()
            self.server.close()
        for entry in self.path.iterdir():
            entry.unlink()
        self.path.rmdir()


@pytest.fixture
def fallback_taken():
    taken = FallbackDirectory()
    try:
        yield taken
    finally:
        taken.remove()


def _without_runtime_dirs() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY") and not k.startswith("INFERD_")}


def test_a_socket_directory_made_first_by_another_user_is_refused_by_daemon_and_client(tmp_path, fallback_taken):
    command = [sys.executable, "-m", "inferd.daemon", "serve", "--models", str(tmp_path), "--socket", "auto",
               "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--log-format", "json"]
    daemon = subprocess.Popen(command, env=_without_runtime_dirs(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              text=True)
    try:
        _, stderr = daemon.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.communicate()
        raise AssertionError("the daemon served through another user's directory") from None
    assert daemon.returncode != 0
    assert "refusing the socket directory" in stderr and f"belongs to uid {intruder().pw_uid}" in stderr
    assert os.stat(fallback_taken.path).st_uid == intruder().pw_uid  # left as it was

    # The client, with no socket named, must not connect there either (to whoever listens).
    fallback_taken.listen()
    code = ("from inferd.client import Client, InferdClientError\n"
            "try:\n    Client().ready()\nexcept InferdClientError as e:\n    print(e.code, e.message)\n")
    client = subprocess.run([sys.executable, "-c", code], env=_without_runtime_dirs(), capture_output=True, text=True,
                            timeout=60)
    assert "unavailable not connecting to inferd through" in client.stdout, client.stdout + client.stderr
    with pytest.raises(InferdClientError) as e:  # nor when the path is given
        Client(socket=str(fallback_taken.path / "inferd.sock")).ready()
    assert "belongs to uid" in e.value.message
    assert fallback_taken.captured == 0


def test_the_daemon_makes_the_fallback_directory_private(tmp_path, monkeypatch):
    path = Path(f"/tmp/inferd-{os.getuid()}")
    if os.path.lexists(path):
        pytest.skip(f"{path} exists already (a daemon of this user may be using it)")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    try:
        with DaemonProcess(tmp_path, "--socket", "auto"):
            info = os.lstat(path)
            assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
            assert stat.S_IMODE(os.lstat(path / "inferd.sock").st_mode) == 0o660
            with Client() as c:  # the client finds it, and trusts it
                assert c.ready()
    finally:
        if path.exists():
            for entry in path.iterdir():
                entry.unlink()
            path.rmdir()


def test_socket_permissions_are_never_set_through_a_symlink(tmp_path):
    from inferd.daemon.frontends.unix import set_socket_permissions

    secret = tmp_path / "secret"
    secret.write_text("root's own")
    secret.chmod(0o600)
    swapped = tmp_path / "inferd.sock"
    swapped.symlink_to(secret)  # what a local user would put in place of the socket
    with pytest.raises(OSError, match="no longer the daemon's socket"):
        set_socket_permissions(str(swapped), "root")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600

    real = tmp_path / "real.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(real))
        set_socket_permissions(str(real), "root")
        assert stat.S_IMODE(os.lstat(real).st_mode) == 0o660
