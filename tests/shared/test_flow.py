"""flow.FlowControl: reading resumes only when no reason to pause is left (a pure unit: no socket)."""

from __future__ import annotations

import asyncio

from plugrpc.flow import FlowControl


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing


def test_nothing_happens_before_the_transport_exists() -> None:
    flow = FlowControl()
    flow.pause_writing()
    assert flow.transport is None and repr(flow) == "<FlowControl paused: write>"


def test_each_reason_must_clear_before_reading_resumes() -> None:
    flow, transport = FlowControl(), Transport()
    flow.transport = transport
    flow.too_many()
    flow.pause_writing()
    assert transport.calls == ["pause"] and not flow.reading and flow.busy
    flow.resume_writing()
    assert transport.calls == ["pause"]  # still too many calls in flight
    flow.few_enough()
    assert transport.calls == ["pause", "resume"] and flow.reading and not flow.busy
    assert repr(flow) == "<FlowControl reading>"
    flow.few_enough()  # again: nothing to do
    assert transport.calls == ["pause", "resume"]


def test_closing_is_for_good_and_a_closed_transport_is_left_alone() -> None:
    flow, transport = FlowControl(), Transport()
    flow.transport = transport
    flow.close()
    flow.pause_writing()
    flow.resume_writing()
    assert transport.calls == ["pause"] and repr(flow) == "<FlowControl paused: closing>"
    other, gone = FlowControl(), Transport()
    other.transport, gone.closing = gone, True
    other.too_many()
    assert gone.calls == []
