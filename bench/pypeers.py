"""The peers a Python user would pick for process-to-process calls: rpyc, Pyro5 and grpclib, each on a unix socket.

`python -m bench.pypeers KIND --socket PATH` runs one of them, binding PATH itself as each
library does; the clients below are what a user of each would write, with the fastest settings
each documents (measured here, see each server):

- rpyc: a `ThreadedServer` (a thread per connection, the server its docs start with); the
  client caches the remote method, since every attribute access on a netref is a round trip of
  its own. rpyc passes a dict by reference (a netref, every access another round trip), so the
  call sends the params' string and returns it, the value a user would pass.
- Pyro5: the "thread" server type with the marshal serializer and a thread pool as large as the
  run's connections; each caller has its own proxy (a proxy belongs to one thread and carries
  one call at a time, so Pyro5 has no pipelining).
- grpclib: pure-Python gRPC on asyncio (uvloop, as the grpcio row), a generic handler with a
  JSON codec over bytes (no protoc), a channel per connection, many streams on one channel in
  the pipelined mode.

rpyc and Pyro5 are synchronous: their callers are threads (`Client(blocking=True)` in
bench.rows), each blocking in its call, as a user runs them; grpclib's are asyncio tasks.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Final

import orjson
import uvloop

from .baselines import until_signalled
from .peers import GRPC_METHOD

PYRO_OBJECT: Final = "bench"
BLOCKING_TIMEOUT: Final = 30.0
"""Seconds a blocking call may take before it fails: a dead server must not hang a caller's thread."""
PYRO_POOL: Final = 1024
"""Pyro5's thread server refuses connections beyond its pool ("no free workers"); the run opens up to 256."""


class _BlockingConnections:
    """`n` connections of a synchronous library, all opened before the window (the ones opened are closed again
    when one fails); a subclass says how to open, call on and close one."""

    def __init__(self, n: int) -> None:
        self._conns: list[Any] = []
        try:
            for _ in range(n):
                self._conns.append(self._open())
        except BaseException:
            self._close()
            raise
        self.calls: list[Callable[[Any], Any]] = [self._caller(c) for c in self._conns]

    def _open(self) -> Any:
        raise NotImplementedError

    def _caller(self, conn: Any) -> Callable[[Any], Any]:
        raise NotImplementedError

    def _close_one(self, conn: Any) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        for c in self._conns:
            self._close_one(c)

    async def aclose(self) -> None:
        self._close()


# --- rpyc ------------------------------------------------------------------------------------


def serve_rpyc(path: str) -> None:
    """rpyc's ThreadedServer; its ThreadPoolServer answered a call in about 100 ms here (its poll interval), and
    rpyc (6.0) has no asyncio server."""
    import rpyc
    from rpyc.utils.server import ThreadedServer

    class EchoService(rpyc.Service):  # type: ignore[misc]
        def exposed_echo(self, data: str) -> str:
            return data

    # SIGTERM's default action ends the process: nothing to finish for an echo.
    ThreadedServer(EchoService, socket_path=path, protocol_config={"sync_request_timeout": BLOCKING_TIMEOUT}).start()


class RpycConnections(_BlockingConnections):
    """`n` rpyc connections; in the pipelined mode (n=1) every caller thread shares the one connection, which
    rpyc supports: each waits for its own reply while the others' requests are in flight."""

    def __init__(self, path: str, n: int) -> None:
        self._path = path
        super().__init__(n)

    def _open(self) -> Any:
        from rpyc.utils.factory import unix_connect

        return unix_connect(self._path, config={"sync_request_timeout": BLOCKING_TIMEOUT})

    def _caller(self, conn: Any) -> Callable[[Any], Any]:
        echo = conn.root.echo  # one round trip here rather than one more per call

        def call(params: dict[str, str]) -> dict[str, str]:
            return {"data": echo(params["data"])}

        return call

    def _close_one(self, conn: Any) -> None:
        conn.close()


# --- Pyro5 -----------------------------------------------------------------------------------


def _pyro_config() -> None:
    """Measured here at one caller (p50): marshal 85 us, json 93 us, serpent (the default) 131 us with the thread
    server; the multiplex server was slower with each (126-157 us), and at 64 callers no faster (both 11,000-15,000
    calls/s, on a machine shared with other work)."""
    from Pyro5.api import config

    config.SERIALIZER = "marshal"
    config.SERVERTYPE = "thread"
    config.THREADPOOL_SIZE = PYRO_POOL
    config.COMMTIMEOUT = BLOCKING_TIMEOUT


def serve_pyro5(path: str) -> None:
    import Pyro5.api

    _pyro_config()

    @Pyro5.api.expose
    class Echo:
        def echo(self, params: Any) -> Any:
            return params

    daemon = Pyro5.api.Daemon(unixsocket=path)
    daemon.register(Echo(), PYRO_OBJECT)
    daemon.requestLoop()  # until SIGTERM's default action ends the process


class PyroConnections(_BlockingConnections):
    """`n` Pyro5 proxies, each its own connection, connected before the window."""

    def __init__(self, path: str, n: int) -> None:
        _pyro_config()
        self._uri = f"PYRO:{PYRO_OBJECT}@./u:{path}"
        super().__init__(n)

    def _open(self) -> Any:
        import Pyro5.api

        proxy = Pyro5.api.Proxy(self._uri)
        proxy._pyroBind()
        return proxy

    def _caller(self, proxy: Any) -> Callable[[Any], Any]:
        echo = proxy.echo

        def call(params: Any) -> Any:
            # A proxy serves only the thread that owns it; the warm-up call ran in another thread than the
            # caller's. Claiming is one comparison when the caller owns it already.
            proxy._pyroClaimOwnership()
            return echo(params)

        return call

    def _close_one(self, proxy: Any) -> None:
        proxy._pyroClaimOwnership()
        proxy._pyroRelease()


# --- grpclib ---------------------------------------------------------------------------------


def _json_codec() -> Any:
    from grpclib.encoding.base import CodecBase

    class JsonCodec(CodecBase):  # type: ignore[misc]
        """Messages are the params as JSON bytes, as in the grpcio row: no protoc, no message classes."""

        __content_subtype__ = "json"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return orjson.dumps(message)

        def decode(self, data: bytes, message_type: Any) -> Any:
            return orjson.loads(data)

    return JsonCodec()


async def serve_grpclib(path: str) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server, Stream

    class Echo:
        async def echo(self, stream: Stream[Any, Any]) -> None:
            await stream.send_message(await stream.recv_message())

        def __mapping__(self) -> dict[str, Handler]:
            return {GRPC_METHOD: Handler(self.echo, Cardinality.UNARY_UNARY, None, None)}

    server = Server([Echo()], codec=_json_codec())
    await server.start(path=path, backlog=4096)
    await until_signalled()
    server.close()
    await server.wait_closed()


class GrpclibConnections:
    """`n` grpclib channels, each its own HTTP/2 connection (opened on its first call)."""

    def __init__(self, path: str, n: int) -> None:
        from grpclib.client import Channel, UnaryUnaryMethod

        codec = _json_codec()
        self._channels = [Channel(path=path, codec=codec) for _ in range(n)]
        self.calls: list[Callable[[Any], Any]] = [UnaryUnaryMethod(ch, GRPC_METHOD, None, None)
                                                  for ch in self._channels]

    async def aclose(self) -> None:
        for ch in self._channels:
            ch.close()


SERVERS: Final[dict[str, Callable[[str], None]]] = {
    "rpyc": serve_rpyc,
    "pyro5": serve_pyro5,
    "grpclib": lambda path: uvloop.run(serve_grpclib(path)),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pypeers", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--socket", required=True, help="the unix socket path to bind")
    args = parser.parse_args()
    SERVERS[args.kind](args.socket)


if __name__ == "__main__":
    main()
