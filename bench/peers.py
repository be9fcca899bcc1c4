"""The peers' servers and clients: the same echo over gRPC and over HTTP JSON-RPC, each on a unix socket.

`python -m bench.peers grpc --socket PATH` runs a grpc.aio server with a generic handler
(`/bench.Bench/Echo`, messages are the params as JSON bytes, orjson on both ends, no codegen);
`python -m bench.peers http` serves POST / with one JSON-RPC request per HTTP request (aiohttp) on
the listening socket it gets as fd 3. Both servers run on uvloop, which measured fastest for
both here; the clients below are what a user of each would write.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
import uvloop

from plugrpc.wire import DEFAULT_MAX_LINE

from .baselines import inherited_socket, until_signalled
from .clients import CallFailed

GRPC_SERVICE: Final = "bench.Bench"
GRPC_METHOD: Final = f"/{GRPC_SERVICE}/Echo"
HTTP_URL: Final = "http://bench/"
"""aiohttp needs a URL even over a unix socket; the host is never resolved."""


async def serve_grpc(path: str) -> None:
    import grpc

    async def echo(request: Any, context: Any) -> Any:
        return request

    handler = grpc.method_handlers_generic_handler(
        GRPC_SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=orjson.loads, response_serializer=orjson.dumps
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    await until_signalled()
    await server.stop(0.5)


async def serve_http() -> None:
    from aiohttp import web

    async def rpc(request: web.Request) -> web.Response:
        msg = orjson.loads(await request.read())
        body = orjson.dumps({"jsonrpc": "2.0", "result": msg.get("params"), "id": msg.get("id")})
        return web.Response(body=body, content_type="application/json")

    # The default 1 MiB request limit would refuse the 1 MiB payload row; match the router's limit.
    app = web.Application(client_max_size=DEFAULT_MAX_LINE)
    app.router.add_post("/", rpc)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, inherited_socket(), backlog=4096).start()
    await until_signalled()
    await runner.cleanup()


Call = Callable[[Any], Awaitable[Any]]


class GrpcConnections:
    """`n` gRPC channels, each its own HTTP/2 connection (no subchannel sharing between them)."""

    def __init__(self, path: str, n: int) -> None:
        import grpc

        self._channels = [
            grpc.aio.insecure_channel(f"unix:{path}", options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(n)
        ]
        self.calls: list[Call] = [
            ch.unary_unary(GRPC_METHOD, request_serializer=orjson.dumps, response_deserializer=orjson.loads)
            for ch in self._channels
        ]

    async def aclose(self) -> None:
        for ch in self._channels:
            await ch.close()


class HttpConnections:
    """One aiohttp session per caller slot, each limited to one keep-alive connection."""

    def __init__(self, path: str, n: int) -> None:
        import aiohttp

        self._sessions = [
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path, limit=1)) for _ in range(n)
        ]
        self.calls: list[Call] = [self._caller(s) for s in self._sessions]

    @staticmethod
    def _caller(session: Any) -> Call:
        counter = iter(range(1, 1 << 62))
        headers = {"Content-Type": "application/json"}

        async def call(params: Any) -> Any:
            body = orjson.dumps({"jsonrpc": "2.0", "method": "echo", "params": params, "id": next(counter)})
            async with session.post(HTTP_URL, data=body, headers=headers) as resp:
                content = await resp.read()
                if resp.status != 200:
                    raise CallFailed(f"HTTP {resp.status}: {content[:200]!r}")
            msg = orjson.loads(content)
            if "error" in msg:
                raise CallFailed(f"error response: {msg['error']}")
            return msg["result"]

        return call

    async def aclose(self) -> None:
        for s in self._sessions:
            await s.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["grpc", "http"])
    parser.add_argument("--socket", help="path to bind (grpc binds it itself)")
    args = parser.parse_args()
    if args.kind == "grpc":
        if not args.socket:
            parser.error("grpc needs --socket")
        uvloop.run(serve_grpc(args.socket))
    else:
        uvloop.run(serve_http())


if __name__ == "__main__":
    main()
