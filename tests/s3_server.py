"""An S3-compatible server on loopback for the tests: moto's standalone server (`moto_server`,
from the `moto[server]` package) in a subprocess, with its credential checks on, so that wrong
credentials are refused as by a real store.

moto keeps its buckets in memory: `pause()`/`resume()` (SIGSTOP/SIGCONT) make the store hang
and come back with its objects, `stop()` makes it refuse connections for good."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3

REGION = "us-east-1"
# The calls that may go unsigned before moto starts checking credentials: the IAM user, its
# key and its policy that setup() makes (every later call needs that key).
_SETUP_CALLS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, log_dir: Path):
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / "moto.log"
        self.proc: subprocess.Popen | None = None
        self.access_key = self.secret_key = ""

    def start(self, timeout: float = 30) -> S3Server:
        moto = Path(sys.executable).with_name("moto_server")
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(_SETUP_CALLS))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start:\n" + self.log_path.read_text()[-2000:]) from None
                time.sleep(0.1)
        self._make_user()
        return self

    def _make_user(self) -> None:
        iam = boto3.client("iam", endpoint_url=self.endpoint_url, region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="inferd")
        key = iam.create_access_key(UserName="inferd")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="inferd", PolicyName="s3", PolicyDocument=json.dumps(policy))
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def client(self, secret_key: str | None = None):
        """A boto3 S3 client with the server's credentials (or a wrong secret)."""
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key if secret_key is None else secret_key)

    def env(self, secret_key: str | None = None) -> dict[str, str]:
        """The standard AWS environment for a daemon that reads this store: its credentials, and
        nothing read from the machine's own AWS files or an instance-metadata service."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key if secret_key is None else secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def pause(self) -> None:
        """The store hangs: connections open, nothing answers (a stuck store or network)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """The store goes away: connections are refused (its objects are lost: moto keeps them in memory)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
