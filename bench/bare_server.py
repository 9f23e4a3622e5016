"""Reference server for `bench.py --bare`: aiohttp on uvloop that reads the body and returns a
fixed small JSON, no inference. It shows the ceiling of the HTTP stack alone on this machine.

It announces itself like the daemon does (a JSON "listening" line on stderr, READY=1 on
$NOTIFY_SOCKET) so that bench.py starts both the same way.
"""

import uvloop
from aiohttp import web
from announce import serve_until_sigterm

BODY = b'{"model_name":"mlp","outputs":[]}'


async def infer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def main() -> None:
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    await serve_until_sigterm("http", f"{host}:{port}")
    await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(main())
