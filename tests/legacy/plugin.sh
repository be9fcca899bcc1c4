#!/bin/sh
# A core0-style plugin in POSIX sh, as hand-written scripts did it: `plugin.sh <command> <json-args>`,
# once per call. The result goes on stdout between a "20:::" line and a ":::" line; other stdout
# lines are logs; a failure is an error text on stderr (nothing framed) and a non-zero exit. Extra
# commands misbehave on purpose for tests/process/test_execmode.py.

result() {
    printf '20:::\n%s\n:::\n' "$1"
}

# A JSON string argument without its quotes (the tests pass plain file names).
unquote() {
    v=${1#\"}
    printf '%s' "${v%\"}"
}

if [ $# -eq 0 ]; then
    echo "missing command" >&2
    exit 1
fi

case $1 in
version)
    echo "before the result"
    result '"1.0alpha"'
    echo "after the result"
    ;;
echo)
    result "${2-null}"
    ;;
argc)
    result "$#"
    ;;
context)
    result "{\"cwd\": \"$(pwd)\", \"plugin\": \"${PLUGRPC_PLUGIN-}\", \"listen\": \"${LISTEN_FDS-}\", \"secret\": \"${PLUGRPC_TEST_SECRET-}\"}"
    ;;
nothing)
    echo "did it, nothing to return"
    ;;
garbage)
    result '{not json'
    ;;
unterminated)
    printf '20:::\n"half"\n'
    ;;
fail)
    echo "warming up" >&2
    echo "disk on fire" >&2
    exit 3
    ;;
longfail)
    # 100 KiB of stderr noise before the error.
    yes "noise noise noise noise noise noise noise noise noise noise noise noise noise noise" | head -c 102400 >&2
    echo >&2
    echo "the actual error" >&2
    exit 1
    ;;
gofail)
    # core0's Go plugin.Plugin: the error string framed as the result, exit 1.
    echo "a log line on stderr" >&2
    result '"bad things happened"'
    exit 1
    ;;
sleep)
    # Write our pid and a child's pid to <arg>.pids, then wait forever.
    sleep 600 &
    echo "$$ $!" > "$(unquote "$2").pids"
    wait
    ;;
stubborn)
    trap '' TERM
    sleep 600 &
    echo "$$ $!" > "$(unquote "$2").pids"
    wait
    ;;
count)
    # How many executions run at once: each one is a file in running/ while it lasts.
    mkdir -p running
    touch "running/$$"
    ls running | wc -l >> counts
    sleep 0.3
    rm "running/$$"
    result '"counted"'
    ;;
daemon)
    # Leaves a child behind that keeps the stdout pipe open.
    sleep 600 &
    echo "$!" > daemon.pid
    result '"left a child"'
    ;;
flood)
    exec yes flooding the pipe
    ;;
*)
    echo "unknown command: $1" >&2
    exit 1
    ;;
esac
