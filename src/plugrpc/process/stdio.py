"""A stdio server's stdin and stdout as one connection: the transport the router's `Upstream` talks over.

asyncio gives a pipe pair two transports; a protocol written for a socket wants one. `PipeConnection`
is that one: writes go to the process's stdin, what it prints on stdout is the protocol's data. The
connection is lost when stdout ends (the process exited, or closed it), never when only stdin goes:
answers still in the stdout pipe are read first. `close_input()` closes stdin alone, which ends most
such servers, and is how stopping one begins.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from typing import IO, Any


class PipeConnection(asyncio.Transport):
    """Two pipe transports as one (`write` to stdin, `data_received` from stdout); see the module docstring."""

    def __init__(self, protocol: asyncio.Protocol, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._protocol = protocol
        self._writer: asyncio.WriteTransport | None = None
        self._reader: asyncio.ReadTransport | None = None
        self._stdin_fd = -1
        self._lost = False
        self.done: asyncio.Future[None] = loop.create_future()
        """Resolved once stdout has ended and the protocol was told (`connection_lost`)."""

    @classmethod
    async def open(cls, protocol: asyncio.Protocol, stdin: IO[bytes], stdout: IO[bytes]) -> PipeConnection:
        """Connect `protocol` to a process's pipes; they are the connection's to close from now on."""
        loop = asyncio.get_running_loop()
        conn = cls(protocol, loop)
        conn._stdin_fd = stdin.fileno()
        try:
            conn._writer, _ = await loop.connect_write_pipe(lambda: _Stdin(protocol), stdin)
            conn._reader, _ = await loop.connect_read_pipe(lambda: _Stdout(conn), stdout)
        except BaseException:
            for pipe, transport in ((stdin, conn._writer), (stdout, conn._reader)):
                if transport is None:
                    pipe.close()
                else:
                    transport.close()
            raise
        protocol.connection_made(conn)
        return conn

    # --- what the protocol calls -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    def is_closing(self) -> bool:
        return self._lost or self._writer is None or self._writer.is_closing()

    def get_write_buffer_size(self) -> int:
        return 0 if self._writer is None else self._writer.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pipe_unread(self) -> int:
        """Bytes in the stdin pipe the process has not read yet (FIONREAD), else 0."""
        if self.is_closing():
            return 0
        try:
            return int(struct.unpack("i", fcntl.ioctl(self._stdin_fd, termios.FIONREAD, b"\0\0\0\0"))[0])
        except OSError:
            return 0

    def close_input(self) -> None:
        """Close stdin now (whatever was not written yet is dropped); stdout is still read until it ends."""
        if self._writer is not None:
            self._writer.abort()

    def abort(self) -> None:
        """Close both pipes now; the protocol's `connection_lost` follows, as for any transport."""
        self.close_input()
        if self._reader is not None:
            self._reader.close()

    def close(self) -> None:
        self.abort()

    # --- what the pipes tell -----------------------------------------------------------------

    def _ended(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.close_input()
        try:
            self._protocol.connection_lost(exc)
        finally:
            self.done.set_result(None)


class _Stdin(asyncio.Protocol):
    """The write side: flow control goes to the connection's protocol; its loss says nothing (see the module)."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self._protocol = protocol

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class _Stdout(asyncio.Protocol):
    """The read side: its data is the connection's, its end is the connection's end."""

    def __init__(self, conn: PipeConnection) -> None:
        self._conn = conn
        self._protocol = conn._protocol

    def data_received(self, data: bytes) -> None:
        self._protocol.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn._ended(exc)
