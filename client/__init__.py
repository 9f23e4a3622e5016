"""Python client for inferd: `Client` (blocking) and `AsyncClient` (asyncio), over the daemon's
Unix socket (docs/unix-socket-protocol.md) or its KServe V2 HTTP API.

    with Client() as c:  # or Client(socket=PATH), Client(url="http://127.0.0.1:8000")
        outputs = c.infer("mlp", {"input": x})

Uses numpy, msgpack and the standard library; aiohttp only for AsyncClient(url=...).
"""

from inferd.client.client import AsyncClient, Client
from inferd.client.errors import InferdClientError
from inferd.client.paths import default_socket_path

__all__ = ["AsyncClient", "Client", "InferdClientError", "default_socket_path"]
