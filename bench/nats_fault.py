"""A TCP proxy that fails silently on demand, between a router (or a caller) and nats-server: a partition, a
hung peer or a slow link, with no root, namespaces or kernel modules (the tests drive it too, tests/nats_proxy.py).

`python -m bench.nats_fault UPSTREAM_PORT` prints `port N`, then takes one command a line on stdin,
answering `ok`: `pass` (bytes go through), `latency SECONDS`, `pause` (nothing goes through or is
read), `blackhole` (whatever comes is read and dropped, sockets stay open: a partition; leaving it
resets those connections, as the peers would once they notice), `reset`. While paused or
blackholed, new connections are refused. The nats_blackhole row (bench.silent) drives one per router.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from typing import Final

HOST: Final = "127.0.0.1"
CHUNK: Final = 1 << 16


class Link:
    """One proxied connection: a pump each way, and the mode they obey."""

    def __init__(self, proxy: Proxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 server: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.writers = (client[1], server[1])
        self.dropped = False
        """Bytes were dropped (blackhole): the streams are broken, so the link is reset when it ends."""
        self.tasks = [asyncio.ensure_future(self.pump(client[0], server[1])),
                      asyncio.ensure_future(self.pump(server[0], client[1]))]

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proxy = self.proxy
        due: deque[tuple[float, bytes]] = deque()
        wake = asyncio.Event()
        deliverer = asyncio.ensure_future(self.deliver(due, wake, writer))
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await proxy.flowing.wait()  # pause: hold this chunk, read no more
                if proxy.mode == "blackhole":
                    self.dropped = True
                    continue
                due.append((time.monotonic() + proxy.latency, data))
                wake.set()
            while due:  # what was read before EOF still arrives
                await asyncio.sleep(0.01)
        except (ConnectionError, OSError):
            pass
        finally:
            deliverer.cancel()
            self.close()

    async def deliver(self, due: deque[tuple[float, bytes]], wake: asyncio.Event,
                      writer: asyncio.StreamWriter) -> None:
        while True:
            if not due:
                wake.clear()
                await wake.wait()
                continue
            at, data = due[0]
            if (left := at - time.monotonic()) > 0:
                await asyncio.sleep(left)
            await self.proxy.flowing.wait()
            due.popleft()
            writer.write(data)
            await writer.drain()

    def close(self, reset: bool = False) -> None:
        for writer in self.writers:
            transport = writer.transport
            if reset:
                transport.abort()
            else:
                transport.close()
        self.proxy.links.discard(self)


class Proxy:
    """Listens on 127.0.0.1, forwards to `upstream` on 127.0.0.1, in the mode last set."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.latency = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.links: set[Link] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._accept, HOST, port, reuse_address=True)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection(HOST, self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.links.add(Link(self, (reader, writer), upstream))

    async def set(self, command: str) -> None:
        """`pass`, `latency SECONDS`, `pause`, `blackhole` or `reset` (the module docstring)."""
        word, _, arg = command.partition(" ")
        if word == "reset":
            for link in list(self.links):
                link.close(reset=True)
            return
        if word not in ("pass", "latency", "pause", "blackhole"):
            raise ValueError(f"unknown mode {command!r}")
        if self.mode == "blackhole" and word != "blackhole":
            for link in list(self.links):
                if link.dropped:
                    link.close(reset=True)
        self.mode = word
        self.latency = float(arg) if word == "latency" else 0.0
        if word == "pause":
            self.flowing.clear()
        else:
            self.flowing.set()
        cut = word in ("pause", "blackhole")
        if cut and self.server is not None:
            self.server.close()
            self.server = None
        elif not cut and self.server is None:
            await self.start(self.port)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _main(upstream: int) -> None:
    proxy = Proxy(upstream)
    port = await proxy.start()
    _say(f"port {port}")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        try:
            await proxy.set(line)
            _say("ok")
        except ValueError as exc:
            _say(f"error {exc}")
    await proxy.set("reset")
    if proxy.server is not None:
        proxy.server.close()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1])))
