#!/bin/sh
# A plugin as core0's Go library (base/plugin) wrote them, in POSIX sh: `core0.sh <command> <args-json>`.
# The result, or on failure the error text as a JSON string, is framed on stdout as `20:::` + JSON +
# a `:::` line; a failure exits 1 with nothing on stderr. $FRAMING picks one of the three framings of
# core0's history: `latest` (no final newline, the default), `blank` (an empty line before `:::`) or
# `split` (the JSON on a line of its own). A few commands print core0 log messages of other levels.
# (Shared by the exec-mode, core0-image and conformance tests: add commands, change none.)

frame() {
    case ${FRAMING-latest} in
    latest) printf '20:::%s\n:::' "$1" ;;
    blank) printf '20:::%s\n\n:::\n' "$1" ;;
    split) printf '20:::\n%s\n:::\n' "$1" ;;
    esac
}

fail() {
    frame "\"$1\""
    exit 1
}

[ $# -eq 0 ] && fail "missing command"

case $1 in
version) frame '"1.0alpha"' ;;
echo) frame "$2" ;;
hostname) FRAMING=split frame "\"$(uname -n)\"" ;;
argv) frame "[\"$1\", $2]" ;;
bridge) fail "bridge br0 does not exist" ;;
levels)
    echo "a plain line"
    echo "7::a warning"
    echo "8::an ops error"
    echo "11::a debug line"
    printf '3:::a public message\nof two lines\n:::\n'
    frame '{"done": true}'
    ;;
stderr-frame)
    # core0 read stderr as it read stdout: a frame there is the result too.
    frame '"from stderr"' >&2
    ;;
crash)
    echo "lost my way" >&2
    exit 2
    ;;
silent-crash) exit 4 ;;
record)
    # Appends its args to ./order; ./overlap gets how many record calls ran at once.
    mkdir -p running
    touch "running/$$"
    ls running | wc -l >>overlap
    sleep 0.05
    echo "$2" >>order
    rm "running/$$"
    frame "$2"
    ;;
*) fail "unknown command: $1" ;;
esac
