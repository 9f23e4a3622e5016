"""Reference server for `bench.py --bare`: asyncio+uvloop on a Unix socket speaking inferd's framing
(4-byte big-endian length + msgpack). It unpacks each request for its id and answers with a reply
of the size of the daemon's MLP reply, no inference. It shows the ceiling of that stack alone.

    bare_unix.py PATH

It announces itself like the daemon does (a JSON "listening" line on stderr, READY=1 on
$NOTIFY_SOCKET) so that bench.py starts it the same way.
"""

import asyncio
import os
import sys

import msgpack
import uvloop
from announce import serve_until_sigterm

# What the daemon answers for one MLP row, less the id: same keys, same 40 bytes of output.
OUTPUTS = [{"name": "output", "datatype": "FP32", "shape": [1, 10], "data": bytes(40)}]


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data):
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            end = 4 + int.from_bytes(buf[:4], "big")
            if len(buf) < end:
                break
            msg = msgpack.unpackb(bytes(buf[4:end]))
            del buf[:end]
            reply = msgpack.packb({"id": msg.get("id", 0), "ok": True, "model": "mlp",
                                   "version": "1", "outputs": OUTPUTS}, use_bin_type=True)
            self.transport.write(len(reply).to_bytes(4, "big") + reply)


async def main(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.get_running_loop().create_unix_server(Echo, path)
    await serve_until_sigterm("socket", path)
    server.close()
    os.unlink(path)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1]))
