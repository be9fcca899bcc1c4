"""router.memory: the malloc setting of the router process, checked in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A 1 MiB call as the router sees it, 30 times: the request arrives in 64 KiB chunks, is joined,
# parsed and re-encoded; so is the response. Prints the page faults of the last 20 rounds (the
# first ones may still grow the heap).
LARGE_MESSAGES = """
import resource, sys, orjson
from plugrpc.router.memory import keep_large_buffers
from plugrpc.wire import LineSplitter
kept = keep_large_buffers() if sys.argv[1] == "tuned" else False
request = orjson.dumps({"jsonrpc": "2.0", "method": "echo", "params": {"data": "x" * (1 << 20)}, "id": 1}) + b"\\n"
splitter = LineSplitter()
def receive(line):
    for k in range(0, len(line), 65536):
        got = splitter.feed(bytes(line[k:k + 65536]))
    return orjson.loads(got[0])
for i in range(30):
    if i == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    msg = receive(request)
    response = orjson.dumps({"jsonrpc": "2.0", "result": msg["params"], "id": 2}, option=orjson.OPT_APPEND_NEWLINE)
    del msg
    answer = orjson.dumps(receive(response), option=orjson.OPT_APPEND_NEWLINE)
    del response, answer
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    proc = subprocess.run([sys.executable, "-c", LARGE_MESSAGES, mode], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, check=True)
    kept, count = proc.stdout.split()
    return kept, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_messages_reuse_heap_memory_instead_of_faulting_in_fresh_pages() -> None:
    kept, tuned = faults("tuned")
    assert kept == "True"
    _, plain = faults("plain")
    # 20 rounds allocate ~200 MiB: glibc's defaults fault fresh pages in for most of it.
    assert plain > 1000, f"the scenario no longer shows the problem ({plain} faults untuned)"
    assert tuned < 200, f"{tuned} page faults in 20 rounds of 1 MiB calls (untuned: {plain})"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_an_operators_own_malloc_setting_wins() -> None:
    kept, _ = faults("tuned", {"MALLOC_TRIM_THRESHOLD_": "1048576"})
    assert kept == "False"
