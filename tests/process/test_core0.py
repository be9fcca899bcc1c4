"""core0's output protocol, read line by line as core0 read it: levels, one-line and block messages."""

from __future__ import annotations

import pytest

from plugrpc.process import core0
from plugrpc.process.core0 import Message, Reader, error_text, messages, result_text, says_missing_command


def split(output: bytes) -> list[bytes]:
    """`output` as a pipe reader sees it: lines without their newline, a last line without one kept."""
    lines = output.split(b"\n")
    return lines if lines[-1] else lines[:-1]


# The three framings core0's library wrote over its history.
FRAMINGS = {
    "latest": b'20:::"1.0alpha"\n:::',
    "blank": b'20:::"1.0alpha"\n\n:::\n',
    "split": b'20:::\n"1.0alpha"\n:::\n',
}


@pytest.mark.parametrize("framing", FRAMINGS)
def test_every_framing_is_a_level_20_result(framing: str) -> None:
    found, unclosed = messages(split(FRAMINGS[framing]))
    assert not unclosed
    [msg] = found
    assert msg.level == core0.RESULT_JSON
    assert error_text(msg.text) == "1.0alpha"


def test_plain_lines_take_the_pipe_level() -> None:
    assert messages([b"hello", b""], core0.STDERR) == ([Message(2, b"hello"), Message(2, b"")], False)


def test_one_line_messages_keep_their_level() -> None:
    found, _ = messages([b"7::careful", b"11::details", b"20::{}"])
    assert found == [Message(7, b"careful"), Message(11, b"details"), Message(20, b"{}")]


def test_a_block_gathers_lines_until_a_line_of_three_colons() -> None:
    found, _ = messages([b"3:::first", b"second", b" ::: ", b":::", b"after"])
    assert found == [Message(3, b"first\nsecond\n ::: ", True), Message(1, b"after")]


def test_a_block_left_open_is_reported() -> None:
    reader = Reader(core0.STDOUT)
    assert reader.feed(b'20:::"half"') is None
    assert reader.block is not None
    assert messages([b"20:::", b"{}"]) == ([], True)


@pytest.mark.parametrize("line", [b"x20:::", b"20:", b"20", b":::", b"-1::x", b"20 :::"])
def test_lines_that_match_no_prefix_are_plain(line: bytes) -> None:
    assert messages([line]) == ([Message(1, line)], False)


def test_four_colons_open_a_block_whose_text_starts_with_one() -> None:
    # core0's pattern takes at most three colons; the rest is the text.
    assert messages([b"20::::x", b":::"]) == ([Message(20, b":x", True)], False)


def test_a_huge_level_saturates_as_core0s_uint16_did() -> None:
    assert messages([b"99999999999999999999::x"]) == ([Message(0xFFFF, b"x")], False)


def test_the_last_result_wins() -> None:
    found, _ = messages([b"20::1", b"log", b"20::2"])
    assert result_text(found) == b"2"
    assert result_text([Message(1, b"x")]) is None


@pytest.mark.parametrize(("framed", "text"), [
    (b'"bridge br0 does not exist"', "bridge br0 does not exist"),
    (b'\n"  padded  "\n', "padded"),
    (b"not json at all", "not json at all"),
    (b'{"code": 7}', '{"code": 7}'),
])
def test_error_text(framed: bytes, text: str) -> None:
    assert error_text(framed) == text


@pytest.mark.parametrize("framing", FRAMINGS)
def test_missing_command_is_recognised_in_every_framing(framing: str) -> None:
    assert says_missing_command(split(FRAMINGS[framing].replace(b"1.0alpha", b"missing command")))


@pytest.mark.parametrize("output", [b"", b"missing command\n", b'20:::"unknown command: x"\n:::', b'20:::"missing'])
def test_other_output_is_not_core0s_missing_command(output: bytes) -> None:
    assert not says_missing_command(split(output))
