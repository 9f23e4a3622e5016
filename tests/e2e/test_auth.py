"""Bearer token and TLS on HTTP and gRPC, against a daemon started with both."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
import subprocess
import sys

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from daemon_process import DaemonProcess
from tritonclient.utils import InferenceServerException

TOKEN = "s3cret-token"


def _self_signed(directory) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def secured(tmp_path_factory, model_repo):
    tmp = tmp_path_factory.mktemp("auth")
    cert, key = _self_signed(tmp)
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "token").chmod(0o600)  # a token file others may read is refused
    config = tmp / "inferd.toml"
    config.write_text(f'[auth]\ntoken_file = "{tmp / "token"}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
                      '[server]\nsocket_group = "root"\n')
    with DaemonProcess(model_repo, config=config) as d:
        d.cert = cert
        yield d


def _https(secured) -> tuple[str, ssl.SSLContext]:
    host, port = secured.address
    return f"https://{host}:{port}", ssl.create_default_context(cafile=secured.cert)


def _grpc_address(secured) -> str:
    [event] = [e for e in secured.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


INFER = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}


@pytest.mark.parametrize("headers,status", [({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                            ({"Authorization": TOKEN}, 401), ({"Authorization": f"Bearer {TOKEN}"}, 200)],
                         ids=["no token", "wrong token", "no Bearer", "right token"])
async def test_http_token_over_tls(secured, headers, status):
    url, context = _https(secured)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(ssl=context)) as s:
        async with s.post("/v2/models/fixed/infer", json=INFER, headers=headers) as r:
            assert r.status == status
            doc = await r.json()
            if status == 401:
                assert doc == {"error": "unauthenticated"}  # nothing about why
                assert r.headers["WWW-Authenticate"] == "Bearer"
            else:
                assert doc["outputs"][0]["data"] == [2, 4, 6, 8, 10, 12]


async def test_health_is_open_and_refusals_are_counted(secured):
    url, context = _https(secured)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(ssl=context)) as s:
        assert (await s.get("/v2/health/live")).status == 200
        assert (await s.get("/v2/health/ready")).status == 200
        assert (await s.get("/v2/models/fixed")).status == 401
        assert (await s.get("/metrics")).status == 401
        text = await (await s.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text()
    refused = [line for line in text.splitlines() if line.startswith('inferd_unauthenticated_total{protocol="http"}')]
    assert refused and float(refused[0].split()[-1]) >= 2


async def test_plain_http_is_not_served_on_the_tls_port(secured):
    host, port = secured.address
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            await s.get(f"http://{host}:{port}/v2/health/live")


def test_grpc_token_over_tls(secured):
    x = np.zeros((1, 512), np.float32)
    tensor = grpcclient.InferInput("input", [1, 512], "FP32")
    tensor.set_data_from_numpy(x)
    client = grpcclient.InferenceServerClient(_grpc_address(secured), ssl=True, root_certificates=secured.cert)
    try:
        assert client.is_server_live()  # health is open
        with pytest.raises(InferenceServerException) as e:
            client.infer("mlp", [tensor])
        assert "UNAUTHENTICATED" in str(e.value.status())
        with pytest.raises(InferenceServerException):
            client.infer("mlp", [tensor], headers={"authorization": "Bearer wrong"})
        result = client.infer("mlp", [tensor], headers={"authorization": f"Bearer {TOKEN}"})
        assert result.as_numpy("output").shape == (1, 10)
    finally:
        client.close()


def test_socket_file_mode_and_group(secured):
    info = os.stat(secured.socket_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == 0  # socket_group = "root" in this daemon's config


@pytest.mark.parametrize("auth,reason", [
    ('token_file = "/nonexistent/token"', "cannot read the token"),
    ('tls_cert = "/x.pem"', "set both or neither"),
])
def test_bad_auth_config_is_refused_at_start(tmp_path, auth, reason):
    config = tmp_path / "inferd.toml"
    config.write_text(f"[auth]\n{auth}\n")
    run = subprocess.run([sys.executable, "-m", "inferd.daemon", "serve", "--config", str(config), "--models", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and reason in run.stderr


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
async def test_inferd_client_over_https_with_a_token(secured, sync):
    from inferd.client import AsyncClient, Client, InferdClientError

    url, _ = _https(secured)
    x = np.ones((2, 3), np.float32)
    if sync:
        with Client(url=url, token=TOKEN, cafile=secured.cert) as c:
            assert c.infer("fixed", {"x": x})["y"].tolist() == (2 * x).tolist()
        with Client(url=url, cafile=secured.cert) as c, pytest.raises(InferdClientError) as e:
            c.infer("fixed", {"x": x})
    else:
        async with AsyncClient(url=url, token=TOKEN, cafile=secured.cert) as c:
            assert (await c.infer("fixed", {"x": x}))["y"].tolist() == (2 * x).tolist()
        async with AsyncClient(url=url, cafile=secured.cert) as c:
            with pytest.raises(InferdClientError) as e:
                await c.infer("fixed", {"x": x})
    assert e.value.code == "unauthenticated"
