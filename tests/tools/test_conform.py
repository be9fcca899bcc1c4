"""`plugrpc conform`: it passes real plugins (the SDK on both engines, Node, a core0 binary) and names
the clause a broken plugin breaks; the tables in docs/authors.md are what it prints."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plugrpc.config import EXAMPLE_ROOT
from plugrpc.process import core0
from plugrpc.tools import conform as c

from util import LEGACY, PLUGINS, REPO

pytestmark = pytest.mark.timeout(120)

CONFORM_PLUGIN = PLUGINS / "conform_plugin.py"
AUTHORS = REPO / "docs" / "authors.md"
NODE = shutil.which("node")
ALL = ["--call", "echo", "[1]", "--slow", "sleep", "[0.6]", "--event", "emit", "--progress", "steps", "[2]"]
ROOMY = ["--timeout", "15", "--grace", "15"]
"""For plugins that should pass: waits long enough for a loaded machine (the broken ones keep the short ones)."""
"""The methods of conform_plugin.py, for every clause."""


def plugrpc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "plugrpc", *args], capture_output=True, text=True, timeout=100,
                          stdin=subprocess.DEVNULL, cwd=cwd)


def verdicts(stdout: str) -> dict[str, str]:
    """{clause: PASS|FAIL|SKIP} from the printed table."""
    found = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"(PASS|FAIL|SKIP)  (.+?) +— .*", line)
        if match:
            found[match[2]] = match[1]
    return found


def check(path: Path, *args: str, exec_mode: bool = False) -> tuple[int, dict[str, str], list[str], list[str]]:
    """Run conform in this process (measured by coverage): exit status, verdicts, its lines, its stderr lines."""
    parser_args: dict[str, Any] = {"call": None, "slow": None, "event": None, "progress": None}
    rest = list(args)
    options: dict[str, Any] = {"timeout": 5.0, "grace": 2.0}
    while rest:
        flag = rest.pop(0).removeprefix("--")
        if flag in ("timeout", "grace"):
            options[flag] = float(rest.pop(0))
            continue
        values = [rest.pop(0)]
        if rest and not rest[0].startswith("--"):
            values.append(rest.pop(0))
        parser_args[flag] = c.Method.parse(f"--{flag}", values)
    out: list[str] = []
    err: list[str] = []
    status = c.conform(c.Options(path, **parser_args, **options), exec_mode=exec_mode, out=out.append,
                       err=err.append)
    return status, verdicts("\n".join(out)), out, err


@pytest.fixture
def broken(tmp_path: Path) -> Callable[[str], Path]:
    """An executable that runs conform_plugin.py in one of its modes (the router passes no arguments)."""

    def make(mode: str) -> Path:
        path = tmp_path / mode
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{CONFORM_PLUGIN}" {mode}\n')
        path.chmod(0o755)
        return path

    return make


# --- real plugins pass ---------------------------------------------------------------------------------


def test_sdk_plain_engine_passes() -> None:
    status, found, out, _ = check(PLUGINS / "plain_plugin.py", "--call", "add", "[1, 2]", "--slow", "nap", "[0.6]",
                                  "--event", "emit_from_thread", "[1]", "--progress", "steps", "[2]", *ROOMY)
    assert status == 0, out
    assert "FAIL" not in found.values()
    assert found["events"] == found["progress"] == found["SIGTERM: in-flight calls"] == "PASS"
    assert found["out-of-order answers"] == "SKIP"  # a blocking plain command: answered in order, allowed
    assert found["rpc.direct"] == "PASS"  # every SDK plugin takes direct connections


def test_sdk_asyncio_engine_passes() -> None:
    status, found, out, _ = check(EXAMPLE_ROOT / "plugins" / "demo", "--call", "add", "[1, 2]", "--slow", "sleep",
                                  "[0.6]", "--event", "greet", '{"name": "Ada"}', "--progress", "build", "[2]", *ROOMY)
    assert status == 0, out
    assert [clause for clause, verdict in found.items() if verdict != "PASS"] == []
    assert out[-1] == "17 passed, 0 failed, 0 skipped"


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_example_passes() -> None:
    out = plugrpc("conform", str(EXAMPLE_ROOT / "plugins" / "node-demo.js"), "--call", "add", "[1, 2]",
                  "--slow", "sleep", "[0.6]", "--event", "greet", '{"name": "Ada"}', *ROOMY)
    assert out.returncode == 0, out.stdout
    found = verdicts(out.stdout)
    assert [clause for clause, verdict in found.items() if verdict != "PASS"] == ["rpc.direct", "progress"]


def test_raw_plugin_without_the_sdk_passes(broken: Callable[[str], Path]) -> None:
    status, found, out, _ = check(broken("good"), *ALL, *ROOMY)
    assert status == 0, out
    assert [clause for clause, verdict in found.items() if verdict != "PASS"] == ["rpc.direct"]


def test_direct_calls_when_the_plugin_takes_them(broken: Callable[[str], Path]) -> None:
    assert check(broken("direct"), *ALL)[1]["rpc.direct"] == "PASS"
    assert check(broken("direct"))[1]["rpc.direct"] == "PASS"  # without --call: only its answer is checked


def test_batches_refused_whole_are_allowed(broken: Callable[[str], Path]) -> None:
    status, found, _, _ = check(broken("no-batches"), "--call", "echo", "[1]")
    assert (status, found["batches"]) == (0, "SKIP")


# --- broken plugins fail, naming the clause --------------------------------------------------------------

BROKEN = [
    ("wrong-id", "answers matched by id", "with id 1"),
    ("answers-notifications", "notifications unanswered", "3 notifications, then a request"),
    ("two-per-line", "one message per line", "not one JSON text"),
    ("no-newline", "one message per line", "no newline"),
    ("exits-on-garbage", "-32700 parse error", "closed the connection"),
    ("short-lines", "multi-MiB line", "connection"),
    ("ignores-term", "SIGTERM: exit", "still running 1 s after SIGTERM"),
    ("drops-inflight", "SIGTERM: in-flight calls", "the sleep call in flight"),
    ("term-exit-3", "SIGTERM: exit", "exit code 3"),
    ("direct-lax", "rpc.direct", "echo was not in the exports"),
    ("bad-progress", "progress", "progress must carry"),
    ("bad-event", "events", "not dot-separated tokens"),
    ("no-event", "events", "no rpc.event"),
    ("lax", "-32600 invalid request", '"jsonrpc": "1.0"'),
]


@pytest.mark.parametrize(("mode", "clause", "why"), BROKEN, ids=[mode for mode, _, _ in BROKEN])
def test_broken_plugin_fails_the_clause(broken: Callable[[str], Path], mode: str, clause: str, why: str) -> None:
    timeout = "0.3" if mode == "no-newline" else "1"  # each clause waits that long for the missing newline
    status, found, out, _ = check(broken(mode), *ALL, "--timeout", timeout, "--grace", "1")
    assert status == 1
    assert found[clause] == "FAIL", out
    assert why in next(line for line in out if line.startswith(f"FAIL  {clause} ")), out
    assert re.fullmatch(r"\d+ passed, [1-9]\d* failed, \d+ skipped", out[-1])


def test_never_accepting_fails_activation_and_skips_the_rest(broken: Callable[[str], Path]) -> None:
    status, found, out, err = check(broken("never-accepts"), "--timeout", "0.5")
    assert status == 1
    assert found.pop("fd 3 activation") == "FAIL" and "fd 3" in out[0]
    assert set(found.values()) == {"SKIP"}


def test_a_plugin_that_dies_fails_the_rest_at_once(broken: Callable[[str], Path]) -> None:
    status, found, out, _ = check(broken("exits-on-garbage"), *ALL, "--timeout", "5")
    assert status == 1
    assert "the plugin exited (exit code 2)" in next(line for line in out if "-32601 unknown method" in line)
    assert "exited (exit code 2) before SIGTERM" in next(line for line in out if "SIGTERM: exit" in line)
    assert "stopped reading" not in "\n".join(out)  # a write to a dead plugin says it died


def test_a_plugin_that_cannot_start(tmp_path: Path) -> None:
    script = tmp_path / "nohashbang"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    status, found, out, _ = check(script)
    assert status == 1 and found == {"fd 3 activation": "FAIL"}
    assert "#!" in out[0]


def test_plugin_output_is_shown_when_a_clause_fails(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint('cannot open the database', file=sys.stderr)\n"
                      "sys.exit(1)\n")
    script.chmod(0o755)
    status, found, out, err = check(script)
    assert status == 1 and found["fd 3 activation"] == "FAIL" and "exited (exit code 1)" in out[0]
    assert err[0].startswith("its last") and "cannot open the database" in err[1]


def test_slow_method_too_quick_or_failing(broken: Callable[[str], Path]) -> None:
    _, found, out, _ = check(broken("good"), "--slow", "sleep", "[0]")
    assert found["SIGTERM: in-flight calls"] == found["SIGTERM: exit"] == "SKIP"
    assert "give a slower --slow" in "\n".join(out)
    status, found, out, _ = check(broken("good"), "--slow", "nosuch", "--call", "nosuch")
    assert status == 1
    assert found["ordinary call"] == found["out-of-order answers"] == found["SIGTERM: in-flight calls"] == "FAIL"
    assert found["answers matched by id"] == "FAIL"  # --call answered errors


# --- core0's exec contract -------------------------------------------------------------------------------


BLANK = """#!/bin/sh
# core0's library as it framed results for a while: an empty line before the closing `:::`.
[ $# -eq 0 ] && { printf '20:::"missing command"\\n\\n:::\\n'; exit 1; }
[ "$1" = version ] && { echo "a log line"; printf '20:::"1.0alpha"\\n\\n:::\\n'; exit 0; }
printf '20:::"unknown command: %s"\\n\\n:::\\n' "$1"
exit 1
"""


@pytest.mark.parametrize(("script", "call", "framing"), [
    ("core0.sh", ["version"], r"20:::<json>\n:::"),
    ("core0.sh", ["echo", '{"a": [1]}'], r"20:::<json>\n:::"),
    ("core0.sh", ["hostname"], r"20:::\n<json>\n:::\n"),
    ("blank", ["version"], r"20:::<json>\n\n:::\n"),
])
def test_exec_core0_binary_passes(tmp_path: Path, script: str, call: list[str], framing: str) -> None:
    path = LEGACY / script
    if script == "blank":
        path = tmp_path / script
        path.write_text(BLANK)
        path.chmod(0o755)
    status, found, out, _ = check(path, "--call", *call, *ROOMY, exec_mode=True)
    assert status == 0, out
    assert found == {"exec: no command": "PASS", "exec: unknown command": "PASS", "exec: call": "PASS"}
    assert '"missing command" on stdout as 20:::' in out[0]
    assert out[2].endswith(f"on stdout as {framing}")


def test_exec_cli(tmp_path: Path) -> None:
    out = plugrpc("conform", "--exec", str(LEGACY / "core0.sh"))
    assert out.returncode == 0 and verdicts(out.stdout)["exec: call"] == "SKIP"
    out = plugrpc("conform", "--exec", str(EXAMPLE_ROOT / "legacy" / "sysinfo.sh"), "--call", "hostname")
    assert out.returncode == 0, out.stdout
    out = plugrpc("conform", "--exec", str(LEGACY / "plugin.sh"), "--call", "version")
    assert out.returncode == 1  # it writes its errors on stderr, as some hand-written core0 scripts did
    assert verdicts(out.stdout)["exec: no command"] == "FAIL"
    assert "frames errors on stdout" in out.stdout and 'declare mode = "exec"' in out.stdout


EXEC_BROKEN = [
    ('printf "20:::\\"missing command\\"\\n:::"; exit 2', "exec: no command", "exit code 2 instead of exit code 1"),
    ('printf "20:::\\"usage\\"\\n:::"; exit 1', "exec: no command", 'framed "usage" instead of "missing command"'),
    ('printf "20:::{nope\\n:::"; exit 1', "exec: no command", "a 20::: frame that is not JSON"),
    ('printf "20:::\\"missing\\n"; exit 1', "exec: no command", "an unclosed 20::: block"),
    ('printf "20:::[1]\\n:::"; exit 1', "exec: no command", "an error must be framed as a JSON string"),
    ("sleep 30", "exec: no command", "still running at the timeout"),
    ('[ $# -eq 0 ] && { printf "20:::\\"missing command\\"\\n:::"; exit 1; }; printf "20:::\\"what\\"\\n:::"; '
     "exit 1", "exec: call", "exit code 1 instead of exit code 0"),
]


@pytest.mark.parametrize(("body", "clause", "why"), EXEC_BROKEN)
def test_exec_broken_binary_fails_the_clause(tmp_path: Path, body: str, clause: str, why: str) -> None:
    script = tmp_path / "core0ish"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    status, found, out, _ = check(script, "--call", "version", "--timeout", "1", exec_mode=True)
    assert status == 1 and found[clause] == "FAIL", out
    assert why in next(line for line in out if line.startswith(f"FAIL  {clause} ")), out


def test_exec_unknown_command_in_other_words_passes(tmp_path: Path) -> None:
    script = tmp_path / "wordy"
    script.write_text('#!/bin/sh\n[ $# -eq 0 ] && { printf "20:::\\"missing command\\"\\n:::"; exit 1; }\n'
                      'printf "20:::\\"no such thing\\"\\n:::\\n"; exit 1\n')
    script.chmod(0o755)
    status, found, out, _ = check(script, exec_mode=True)
    assert status == 0 and found["exec: unknown command"] == "PASS"
    assert "core0's own text" in out[1] and r"20:::<json>\n:::\n (none of core0's framings)" in out[1]


def test_exec_cannot_run(tmp_path: Path) -> None:
    script = tmp_path / "nohashbang"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    status, found, _, _ = check(script, exec_mode=True)
    assert status == 1 and found == {"exec: no command": "FAIL"}


# --- the pieces -------------------------------------------------------------------------------------------


def test_frames() -> None:
    latest, blank, split = core0.FRAMINGS.values()
    assert c._frames(b'log\n20:::"a"\n:::') == ([c.Frame(latest, b'"a"')], False)
    assert c._frames(b'20:::"a"\n\n:::\nlog\n') == ([c.Frame(blank, b'"a"\n')], False)
    assert c._frames(b'20:::\n"a"\n:::\n') == ([c.Frame(split, b'\n"a"')], False)
    assert c._frames(b'20:::\n"a"\n"b"\n:::')[0][0].framing == r"20:::\n<json>\n<json>\n::: (none of core0's framings)"
    assert c._frames(b'20:::"a"\n:::\n')[0][0].framing == r"20:::<json>\n:::\n (none of core0's framings)"
    assert c._frames(b'20:::"a"\n') == ([], True)
    assert c._frames(b"no frame\n") == ([], False)


def test_method_parse() -> None:
    assert c.Method.parse("--call", None) is None
    assert c.Method.parse("--call", ["add", "[1, 2]"]) == c.Method("add", [1, 2])
    for values, why in ((["a", "b", "c"], "at most one"), (["a", "{"], "not valid JSON"), (["a", "1"], "object or")):
        with pytest.raises(ValueError, match=why):
            c.Method.parse("--call", values)


def test_cli_usage_errors(tmp_path: Path) -> None:
    out = plugrpc("conform", str(tmp_path / "missing"))
    assert out.returncode == 2 and "not an executable file" in out.stderr
    out = plugrpc("conform", str(LEGACY / "core0.sh"), "--call", "a", "[1")
    assert out.returncode == 2 and "--call a: PARAMS_JSON is not valid JSON" in out.stderr
    out = plugrpc("conform", "--help")
    assert out.returncode == 0 and "--slow METHOD [PARAMS_JSON]" in out.stdout


@pytest.mark.parametrize(("value", "why"), [
    ([1], "not an object"),
    ({"id": 1, "result": 1}, '"jsonrpc": "2.0"'),
    ({"jsonrpc": "2.0", "result": 1}, "without an id"),
    ({"jsonrpc": "2.0", "id": 1}, "neither result and error"),
    ({"jsonrpc": "2.0", "id": 1, "result": 1, "error": {}}, "both result and error"),
    ({"jsonrpc": "2.0", "id": 1, "error": {"code": "1", "message": "m"}}, "integer code"),
])
def test_envelope_problems(value: Any, why: str) -> None:
    problem = c.envelope_problem(value)
    assert problem is not None and why in problem


def test_judges() -> None:
    ok = c.Answer({"jsonrpc": "2.0", "result": 1, "id": "slow"})
    assert c.judge_order([ok, ok], "sleep", True).detail.startswith("an answer with id")
    error = c.Answer({"jsonrpc": "2.0", "error": {"code": -32601, "message": "no"}, "id": "slow"})
    assert "answered" in c.judge_order([error], "sleep", True).detail
    assert c.judge_order([c.Answer([1])], "sleep", True).status == "FAIL"
    assert c.judge_lines([c.Answer(1)]).status == "FAIL"
    answers = [c.Answer({"jsonrpc": "2.0", "result": 1, "id": i}) for i in (1, 1, 2)]
    assert "ids 1, 1, 2" in c.judge_lines(answers).detail
    assert c.judge_ids([c.Answer(1)], [1], False).status == "FAIL"
    assert c.judge_answer(c.Answer({"jsonrpc": "2.0", "result": 1, "id": 1}), 1, -32601) == \
        'a result instead of error -32601: {"jsonrpc":"2.0","result":1,"id":1}'
    batch = c.Answer([{"jsonrpc": "2.0", "result": 1, "id": "b1"}])
    after = c.Answer({"jsonrpc": "2.0", "error": {"code": -32601, "message": "no"}, "id": "after"})
    empty = c.Answer({"jsonrpc": "2.0", "error": {"code": -32600, "message": "no"}, "id": None})
    assert "answered with ids" in c.judge_batches(batch, empty, after).detail
    assert "by something other" in c.judge_batches(c.Answer({"x": 1}), empty, after).detail
    assert "in the batch's answer" in c.judge_batches(c.Answer([1]), empty, after).detail
    assert "2 requests and a notification" in c.judge_batches(c.Gap("silence"), empty, after).detail
    good = c.Answer([{"jsonrpc": "2.0", "result": 1, "id": i} for i in ("b1", "b2")])
    assert "an empty batch" in c.judge_batches(good, after, after).detail
    assert "notifications must get nothing" in c.judge_batches(good, empty, empty).detail
    assert "not a JSON-RPC 2.0 notification" in c.judge_events([{"method": "rpc.event"}], "emit").detail
    assert c.judge_progress([{"method": "rpc.progress", "params": {"id": 1}}], "steps", 1).status == "FAIL"


# --- the docs show what it prints ---------------------------------------------------------------------------


def documented_runs() -> list[tuple[list[str], list[str]]]:
    """Each `$ plugrpc conform ...` in docs/authors.md with the lines shown after it."""
    text = AUTHORS.read_text()
    runs = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ plugrpc conform "):
                end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("$ ")), len(lines))
                runs.append((shlex.split(line[2:]), lines[i + 1 : end]))
    return runs


def test_docs_show_the_output_of_every_bundled_plugin() -> None:
    runs = documented_runs()
    shown_plugins = {Path(arg).name for args, _ in runs for arg in args if (EXAMPLE_ROOT / arg).is_file()}
    assert shown_plugins == {"ovs", "demo", "node-demo.js", "sysinfo.sh"}, "authors.md: conform on every bundled plugin"
    for args, shown in runs:
        if "node-demo.js" in " ".join(args) and NODE is None:
            continue
        out = plugrpc(*args[1:], cwd=EXAMPLE_ROOT)  # the docs run it from the image root
        assert out.stdout.splitlines() == shown, f"docs/authors.md shows another output for: {shlex.join(args)}"



# --- Go: core0's API, persistent, and the same binary run once per call ----------------------------------


@pytest.fixture(scope="module")
def go_ovs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from util import go_build

    return go_build(REPO / "examples" / "go-ovs", tmp_path_factory.mktemp("go") / "ovs-plugin")


@pytest.mark.timeout(300)  # a first build on a cold cache
def test_go_example_passes_both_contracts(go_ovs: Path) -> None:
    status, found, out, _ = check(go_ovs, "--call", "version", "--slow", "sleep", '{"seconds": 0.6}', *ROOMY)
    assert status == 0, out
    assert found["out-of-order answers"] == found["SIGTERM: in-flight calls"] == "PASS"
    status, found, out, _ = check(go_ovs, "--call", "version", *ROOMY, exec_mode=True)
    assert status == 0, out
    assert '"1.0alpha" on stdout as 20:::' in out[2]
