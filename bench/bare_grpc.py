"""Reference server for `bench.py --bare`: a grpclib unary ModelInfer on uvloop that parses the
request and returns a fixed ModelInferResponse of the size of the daemon's MLP reply, no inference.
It shows the ceiling of the grpclib stack alone on this machine.

It announces itself like the daemon does (a JSON "listening" line on stderr, READY=1 on
$NOTIFY_SOCKET) so that bench.py starts it the same way.
"""

import socket

import grpclib.const
import grpclib.server
import uvloop
from announce import serve_until_sigterm

from inferd.daemon.frontends.grpc_gen import inference_pb2 as pb

# What the daemon answers for one MLP row: same fields, same 40 bytes of FP32 output.
REPLY = pb.ModelInferResponse(model_name="mlp", model_version="1")
REPLY.outputs.add(name="output", datatype="FP32", shape=[1, 10])
REPLY.raw_output_contents.append(bytes(40))


class Echo:
    """Only the one method the benchmark calls, under the daemon's service name."""

    async def infer(self, stream: grpclib.server.Stream) -> None:
        await stream.recv_message()
        await stream.send_message(REPLY)

    def __mapping__(self):
        return {"/inference.GRPCInferenceService/ModelInfer": grpclib.const.Handler(
            self.infer, grpclib.const.Cardinality.UNARY_UNARY, pb.ModelInferRequest,
            pb.ModelInferResponse)}


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = grpclib.server.Server([Echo()])
    await server.start(sock=sock)
    host, port = sock.getsockname()[:2]
    await serve_until_sigterm("grpc", f"{host}:{port}")
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    uvloop.run(main())
