#!/bin/sh
# A core0-style legacy plugin (mode = "exec"): run once per call as `sysinfo.sh <command> [<json-args>]`.
# It writes its result between "20:::" and ":::" lines on stdout; other stdout lines are logs.
# On failure it writes the error on stderr and exits non-zero.

result() {
    printf '20:::\n%s\n:::\n' "$1"
}

if [ $# -eq 0 ]; then
    echo "missing command" >&2
    exit 1
fi

case $1 in
hostname)
    # Host names are letters, digits, '-' and '.': no JSON escaping needed.
    result "\"$(uname -n)\""
    ;;
echo)
    echo "echoing $# argument(s)"
    result "${2-null}"
    ;;
*)
    echo "unknown command: $1" >&2
    exit 1
    ;;
esac
