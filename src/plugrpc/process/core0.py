"""core0's output protocol: how core0 read a plugin's stdout and stderr, line by line.

core0 took each pipe of a process as a stream of messages. A line `LEVEL::text` is a one-line
message of that level; a line `LEVEL:::text` opens a block whose text is `text` plus every
following line until a line that is exactly `:::`; any other line is a message of the pipe's own
level (1 for stdout, 2 for stderr). Level 20 is the JSON result: core0's Go plugin library
wrote it as `20:::` + JSON + a `:::` line, in one of three framings over core0's history
(`20:::<json>\\n:::`, `20:::<json>\\n\\n:::\\n`, `20:::\\n<json>\\n:::\\n`), all of which this reads
the same way, and on failure it framed the error text as a JSON string and exited 1.

Pure: lines in, messages out, no I/O; exec mode, the detection of core0 binaries and
`plugrpc conform --exec` all read core0 output through it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Final, NamedTuple

import orjson

STDOUT: Final = 1
STDERR: Final = 2
RESULT_JSON: Final = 20
"""The level of a JSON result; 21, 22, 23 (YAML, TOML, HRD) and 30 (a job) were results too."""
RESULTS: Final = frozenset({20, 21, 22, 23, 30})
MISSING_COMMAND: Final = "missing command"
"""The error core0's library framed when run with no command: how a core0 binary started as a server answers."""

LOG_LEVELS: Final = {
    1: logging.INFO,  # stdout
    2: logging.WARNING,  # stderr
    3: logging.INFO,  # public
    4: logging.INFO,  # operator
    5: logging.INFO,  # unknown
    6: logging.INFO,  # structured
    7: logging.WARNING,  # warning
    8: logging.ERROR,  # ops error
    9: logging.CRITICAL,  # critical
    10: logging.DEBUG,  # statsd
    11: logging.DEBUG,  # debug
}
"""The logging level a message of each core0 level is logged at; other levels log at INFO."""

_LINE: Final = re.compile(rb"(\d+)(:{2,3})(.*)")
_END: Final = b":::"
_MAX_LEVEL: Final = 0xFFFF  # core0 parsed levels as uint16; Go's ParseUint saturates on overflow


class Message(NamedTuple):
    """One message of a pipe: its level, its text (the lines of a block joined by newlines), whether a block."""

    level: int
    text: bytes
    block: bool = False


class Reader:
    """Reads one pipe as core0 did: `feed` takes a line (without its newline), returns a finished message or None."""

    __slots__ = ("level", "block")

    def __init__(self, level: int) -> None:
        self.level = level
        """The level of lines that match no `LEVEL::` prefix: 1 on stdout, 2 on stderr."""
        self.block: tuple[int, list[bytes]] | None = None
        """The level and lines of a `LEVEL:::` block still open."""

    def feed(self, line: bytes) -> Message | None:
        block = self.block
        if block is not None:
            if line == _END:
                self.block = None
                return Message(block[0], b"\n".join(block[1]), True)
            block[1].append(line)
            return None
        match = _LINE.fullmatch(line)
        if match is None:
            return Message(self.level, line)
        level = min(int(match[1]), _MAX_LEVEL)
        if match[2] == _END:
            self.block = (level, [match[3]])
            return None
        return Message(level, match[3])


def messages(lines: Iterable[bytes], level: int = STDOUT) -> tuple[list[Message], bool]:
    """Every message in `lines` read as one pipe; and whether a block was left open at the end."""
    reader = Reader(level)
    out = [msg for line in lines if (msg := reader.feed(line)) is not None]
    return out, reader.block is not None


FRAMINGS: Final = {
    "latest": r"20:::<json>\n:::",
    "blank": r"20:::<json>\n\n:::\n",
    "split": r"20:::\n<json>\n:::\n",
}
"""core0's three framings of a result, as its plugin library wrote them over its history."""


def framing(msg: Message, newline_after: bool) -> str:
    """How a result was written, for authors (`plugrpc conform --exec`): one of `FRAMINGS`, else its shape.

    `newline_after`: whether a newline followed its closing `:::` (the latest library wrote none).
    """
    lines = [b"<json>" if line.strip() else b"" for line in msg.text.split(b"\n")]
    if msg.block:
        shape = f"{msg.level}:::" + r"\n".join(part.decode() for part in lines) + r"\n:::"
        shape += r"\n" if newline_after else ""
    else:
        shape = f"{msg.level}::<json>"
    return shape if shape in FRAMINGS.values() else f"{shape} (none of core0's framings)"


def result_text(found: Iterable[Message]) -> bytes | None:
    """The text of the last level-20 message (core0 kept the last result it saw), else None."""
    text = None
    for msg in found:
        if msg.level == RESULT_JSON:
            text = msg.text
    return text


def error_text(result: bytes) -> str:
    """The error a failed core0 command framed: the JSON string's value, else the framed text as it is."""
    try:
        value = orjson.loads(result)
    except orjson.JSONDecodeError:
        return result.decode("utf-8", "replace").strip()
    if isinstance(value, str):
        return value.strip()
    return result.decode("utf-8", "replace").strip()


def says_missing_command(lines: Iterable[bytes]) -> bool:
    """Whether `lines` (a process's output) hold core0's `"missing command"` frame: a core0 binary run bare."""
    found, _ = messages(lines)
    result = result_text(found)
    return result is not None and error_text(result) == MISSING_COMMAND
