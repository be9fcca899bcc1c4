"""outbox: which lines leave at once and which wait for the end of the loop turn, over real sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from plugrpc.outbox import LineWriter, Outbox


class Writer(LineWriter, asyncio.Protocol):
    """A LineWriter on one end of a socketpair that counts its transport writes."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.transport: asyncio.WriteTransport | None = None
        self._out: list[bytes] = []
        self.writes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport
        write = transport.write

        def counting(data: bytes) -> None:
            self.writes += 1
            write(data)

        transport.write = counting  # type: ignore[method-assign,assignment]


Pair = tuple[Outbox, list[tuple[Writer, socket.socket]]]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """An outbox and three writers, each with the peer socket its bytes arrive on."""
    loop = asyncio.get_running_loop()
    outbox = Outbox()
    ends = []
    for _ in range(3):
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        _, writer = await loop.connect_accepted_socket(lambda: Writer(outbox), ours)
        ends.append((writer, theirs))
    yield outbox, ends
    for writer, theirs in ends:
        assert writer.transport is not None
        writer.transport.close()
        theirs.close()


def pending(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except BlockingIOError:
        return b""


async def test_queued_lines_wait_for_the_end_of_the_turn_and_leave_in_one_write(pair: Pair) -> None:
    _, ends = pair
    for writer, _ in ends:
        for i in range(5):
            writer.queue(b"%d\n" % i)
    assert all(pending(theirs) == b"" for _, theirs in ends)  # nothing written inside the turn
    await asyncio.sleep(0)  # the turn ends: the outbox flushes
    for writer, theirs in ends:
        assert writer.writes == 1
        assert pending(theirs) == b"0\n1\n2\n3\n4\n"


async def test_write_now_leaves_at_once_behind_what_was_queued(pair: Pair) -> None:
    _, ends = pair
    writer, theirs = ends[0]
    writer.write_now(b"alone\n")
    assert pending(theirs) == b"alone\n" and writer.writes == 1
    writer.queue(b"first\n")
    writer.write_now(b"second\n")  # order is kept: the queued line goes out with it, in one write
    assert pending(theirs) == b"first\nsecond\n" and writer.writes == 2
    await asyncio.sleep(0)
    assert pending(theirs) == b"" and writer.writes == 2  # the turn's flush finds nothing left


async def test_flush_writes_every_writer_now(pair: Pair) -> None:
    outbox, ends = pair
    for writer, _ in ends:
        writer.queue(b"x\n")
    outbox.flush()  # as the router does at shutdown, outside a loop turn's end
    assert [pending(theirs) for _, theirs in ends] == [b"x\n"] * 3


async def test_a_closed_transport_drops_lines_instead_of_raising(pair: Pair) -> None:
    _, ends = pair
    writer, _ = ends[0]
    assert writer.transport is not None
    writer.transport.close()
    writer.write_now(b"late\n")
    writer.queue(b"later\n")
    await asyncio.sleep(0)
    assert writer.writes == 0
