#!/bin/sh
# A core0 plugin written as a shell script (mode = "exec"): run once per call as
# `sysinfo.sh <command> <json-args>`. As core0's plugin library did, it frames its result on stdout
# as `20:::` + JSON + a `:::` line, and on failure frames the error text as a JSON string the same
# way and exits 1; other stdout lines are its log.

frame() {
    printf '20:::%s\n:::' "$1"
}

fail() {
    frame "\"$1\""
    exit 1
}

[ $# -eq 0 ] && fail "missing command"

case $1 in
hostname)
    # Host names are letters, digits, '-' and '.': no JSON escaping needed.
    frame "\"$(uname -n)\""
    ;;
echo)
    echo "echoing $# argument(s)"
    frame "${2-null}"
    ;;
*)
    fail "unknown command: $1"
    ;;
esac
