"""`plugrpc` on the command line: parse arguments, build a `Config`, call `api`.

    plugrpc run    [--root DIR] [--socket PATH] [--metrics HOST:PORT] ...   serve an image's plugins
    plugrpc call   [--socket PATH] [--direct] METHOD [PARAMS]   call a method, print its result as JSON
    plugrpc status [--socket PATH] [--json]           a table of the plugins of a running router
    (run, call, status and events take --nats URL: a fleet of routers on NATS, docs/fleet.md)
    plugrpc reload [--socket PATH] [--json]           make a running router re-read its manifest
    plugrpc events [--socket PATH] [PATTERN ...]      print events as they come, one JSON line each
    plugrpc logs   NAME [-n N] [-f] [--socket PATH]   a plugin's recent output, kept by the router
    plugrpc new    NAME [--dir DIR]                   write a plugin skeleton, its manifest entry, a test
    plugrpc conform PATH [--call METHOD [PARAMS]] ... check a plugin executable against the contract
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from ..config import EXAMPLE_ROOT, Config, default_socket
from ..errors import ConfigError, ConnectError, ConnectionLost, ManifestError, PlugrpcError, RpcError
from ..logs import printable
from ..process import pid1
from ..version import __version__
from ..wire import DEFAULT_MAX_LINE
from . import api, status


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an octal mode like 0600, got {text!r}") from None


def _nats_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--nats URL and its credentials and TLS (docs/fleet.md)."""
    parser.add_argument("--nats", metavar="URL", default=None,
                        help=f"{what} (nats://[user:password@|token@]host:4222 or tls://...; several: comma-separated)")
    parser.add_argument("--nats-creds", type=Path, default=None, metavar="FILE",
                        help="a NATS credentials file (JWT and NKey seed) to authenticate with")
    parser.add_argument("--nats-ca", type=Path, default=None, metavar="FILE",
                        help="a CA certificate (PEM) to trust for tls:// servers, beside the system's")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plugrpc", description="Plugins as persistent JSON-RPC 2.0 servers.")
    parser.add_argument("--version", action="version", version=f"plugrpc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.set_defaults(usage=parser)
    socket_help = f"the router's front socket (default: {default_socket()}, or $PLUGRPC_ROUTER)"

    run = sub.add_parser("run", help="supervise an image's plugins and serve the router",
                         description="Supervise the plugins of an image and serve calls on a unix socket. "
                                     "Ready when the socket accepts connections; SIGINT/SIGTERM stop it.")
    run.add_argument("--root", type=Path, default=EXAMPLE_ROOT,
                     help="image root holding .plugin.toml (default: the bundled example image)")
    run.add_argument("--socket", type=Path, default=None, help=socket_help)
    run.add_argument("--socket-mode", type=_octal, default=0o600, help="front socket permissions (default 0600)")
    run.add_argument("--allow-uid", type=int, action="append", default=None, metavar="UID",
                     help="only accept clients with this uid (SO_PEERCRED); repeatable")
    run.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                     help="event loop (default: auto, which is uvloop when it is installed, else asyncio)")
    run.add_argument("--max-line", type=int, default=None, metavar="BYTES",
                     help=f"largest message (one line) accepted from clients and plugins; larger gets -32004 "
                          f"(default: {DEFAULT_MAX_LINE} = {DEFAULT_MAX_LINE >> 20} MiB; at least 1024)")
    run.add_argument("--shutdown-grace", type=float, default=None, metavar="SECONDS",
                     help="time in-flight calls get on shutdown (default 10)")
    run.add_argument("--max-clients", type=int, default=None, metavar="N",
                     help="client connections served at once; past it a new one is told so and closed (default: the "
                          "open-files limit, raised to its hard limit, less an eighth of it (at least 256) kept for "
                          "plugins)")
    run.add_argument("--max-batch", type=int, default=None, metavar="REQUESTS",
                     help="requests one batch may hold; a longer batch is refused whole with -32600 (default 1024)")
    run.add_argument("--max-buffered", type=int, default=None, metavar="BYTES",
                     help="bytes of unfinished lines held for all clients together; a line that would pass it gets "
                          "-32004 and its connection is closed (default: 268435456 = 256 MiB; at least --max-line)")
    run.add_argument("--partial-timeout", type=float, default=None, metavar="SECONDS",
                     help="how long a client's unfinished line may wait for its newline before the connection is "
                          "closed (default 30)")
    run.add_argument("--event-queue", type=int, default=None, metavar="EVENTS",
                     help="events a subscriber that does not read may have waiting before newer ones are dropped "
                          "(and counted: its next event says how many; default 1000)")
    run.add_argument("--no-direct", action="store_true",
                     help="never hand callers a connection of their own to a plugin (router.connect answers "
                          "'disabled' and clients call through the router)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                     help="least severe log records shown, plugins' output included (default: info)")
    run.add_argument("--log-json", action="store_true", help="log JSON lines instead of text")
    _nats_options(run, "also serve on NATS: plugrpc.call.NAME, plugrpc.any.PLUGIN, service plugrpc")
    run.add_argument("--name", default=None,
                     help="the router's name on NATS, unique in the fleet (default: the host name)")
    run.add_argument("--nats-ping-interval", type=float, default=None, metavar="SECONDS",
                     help="seconds between pings to the NATS server (default 2)")
    run.add_argument("--nats-max-pings-out", type=int, default=None, metavar="PINGS",
                     help="pings unanswered before the NATS link counts as dead and the router reconnects "
                          "(default 2: a dead link is noticed within about 6 s)")
    run.add_argument("--metrics", metavar="HOST:PORT|unix:PATH", default=None,
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (or on a unix socket); needs "
                          "prometheus-client: pip install 'plugrpc[metrics]'")

    call = sub.add_parser("call", help="call METHOD through a running router and print the result",
                          description="Print the result as JSON on stdout; on a JSON-RPC error print it on "
                                      "stderr and exit 1.")
    call.add_argument("--socket", type=Path, default=None, help=socket_help)
    call.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                      help="give up after this long with -32002 (default: wait as long as the router lets the "
                           "call run, which is the plugin's own timeout, 30 s unless its manifest says otherwise)")
    _nats_options(call, "call over NATS instead of the socket")
    call.add_argument("--router", default=None, metavar="NAME",
                      help="with --nats: the router to call (default: any router that runs the plugin)")
    call.add_argument("--direct", action="store_true",
                      help="call the plugin on a connection of its own that the router hands over (one hop instead "
                           "of two); a plugin that cannot take one is called through the router")
    call.add_argument("method", metavar="METHOD", help="plugin.method, e.g. ovs.version")
    call.add_argument("params", metavar="PARAMS_JSON", nargs="?", default=None,
                      help="params as a JSON object or array, e.g. '{\"a\": 1}'")

    stat = sub.add_parser("status", help="show the plugins of a running router",
                          description="One line per plugin: mode, state, pid, uptime, restarts, calls in flight, "
                                      "calls, errors and latency percentiles (from router.plugins).")
    stat.add_argument("--socket", type=Path, default=None, help=socket_help)
    stat.add_argument("--json", action="store_true", help="print router.plugins as JSON instead of a table")
    _nats_options(stat, "every router of the fleet on NATS, with a ROUTER column")

    reload = sub.add_parser("reload", help="make a running router re-read its manifest (as SIGHUP does)",
                            description="New plugins start, removed ones drain and stop, changed ones are swapped "
                                        "after their in-flight calls drain; unchanged ones are not touched. An "
                                        "invalid manifest is refused and the router keeps the one it has.")
    reload.add_argument("--socket", type=Path, default=None, help=socket_help)
    reload.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up waiting after this long (default: wait until draining is done)")
    reload.add_argument("--json", action="store_true", help="print the outcome as JSON")

    events = sub.add_parser("events", help="print the events plugins emit, one JSON line each, until Ctrl-C",
                            description="Subscribe to events whose name (PLUGIN.EVENT) matches a pattern and print "
                                        "each as a JSON line: name, data, seq (counting up per plugin) and dropped "
                                        "(events missed before it, when there were). Runs until Ctrl-C.")
    events.add_argument("--socket", type=Path, default=None, help=socket_help)
    _nats_options(events, "the events of every router on NATS (plugrpc.event.ROUTER.PLUGIN.EVENT)")
    events.add_argument("--router", default=None, metavar="NAME",
                        help="with --nats: only this router's events (default: every router's)")
    events.add_argument("patterns", metavar="PATTERN", nargs="*", default=[">"],
                        help="NATS-style: '*' is one token, '>' (last) one or more, e.g. 'ovs.port.*' 'demo.>' "
                             "(default: '>', every event)")

    logs = sub.add_parser("logs", help="show a plugin's recent output (stdout and stderr), as the router keeps it",
                          description="The last lines a plugin printed, from the router's memory (its last 1000 "
                                      "lines, across restarts), oldest first, with their time and level.")
    logs.add_argument("name", metavar="NAME", nargs="?", default=None,
                      help="the plugin (without it: the plugins there are)")
    logs.add_argument("-n", "--lines", type=int, default=20, metavar="N", help="how many lines (default 20)")
    logs.add_argument("-f", "--follow", action="store_true", help="then print new lines as they come, until ^C")
    logs.add_argument("--socket", type=Path, default=None, help=socket_help)
    logs.add_argument("--json", action="store_true", help="one JSON object per line: seq, time, level, text")

    new = sub.add_parser("new", help="write a Python plugin skeleton, its manifest entry and a test",
                         description="Writes DIR/plugins/NAME.py, appends [plugin.NAME] to DIR/.plugin.toml "
                                     "(creating it if needed) and writes DIR/tests/test_NAME.py, which passes as "
                                     "written. Never overwrites a file.")
    new.add_argument("name", metavar="NAME", help="the plugin's name: letters, digits, '_' and '-'")
    new.add_argument("--dir", type=Path, default=Path("."), help="the image root (default: the current directory)")

    conform = sub.add_parser(
        "conform", help="check a plugin executable against the plugin contract, one line per clause",
        usage="plugrpc conform [-h] [--exec] [--root DIR] [--timeout SECONDS] [--grace SECONDS]\n"
              "                       [--call METHOD [PARAMS_JSON]] [--slow METHOD [PARAMS_JSON]]\n"
              "                       [--event METHOD [PARAMS_JSON]] [--progress METHOD [PARAMS_JSON]] PATH",
        description="Start PATH as the router would (a listening socket as fd 3, LISTEN_FDS=1, no shell) and check "
                    "it from outside: PASS, FAIL or SKIP per clause, exit status 1 if one fails. The tool cannot "
                    "know the plugin's methods: name some to check more (a clause that needs one is skipped).")
    conform.add_argument("path", type=Path, metavar="PATH", help="the plugin executable")
    conform.add_argument("--exec", action="store_true",
                         help="check core0's exec contract instead: PATH COMMAND ARGS once per call, the result "
                              "or error in a 20::: frame on stdout")
    conform.add_argument("--root", type=Path, default=None, metavar="DIR",
                         help="working directory of the plugin, its image root (default: PATH's directory)")
    conform.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                         help="longest wait for any one answer (default 10)")
    conform.add_argument("--grace", type=float, default=5.0, metavar="SECONDS",
                         help="time it may take to exit after SIGTERM, its manifest's grace (default 5)")
    for option, what in (("--call", "an ordinary quick method, for round trips, ids and connections "
                                    "(with --exec: run as PATH METHOD PARAMS_JSON)"),
                         ("--slow", "a method taking 0.5-2 s: answers out of order, SIGTERM finishing it"),
                         ("--event", "a method whose call emits an event (rpc.event)"),
                         ("--progress", "a method that reports progress (rpc.progress) before its answer")):
        conform.add_argument(option, nargs="+", default=None, metavar=("METHOD", "PARAMS_JSON"), help=what)
    for command in sub.choices.values():
        command.set_defaults(usage=command)
    return parser


def _config(args: argparse.Namespace) -> Config:
    options: dict[str, Any] = {"root": args.root, "socket_mode": args.socket_mode, "loop": args.loop,
                               "log_level": args.log_level, "log_json": args.log_json}
    if args.socket is not None:
        options["socket"] = args.socket
    if args.allow_uid:
        options["allow_uids"] = frozenset(args.allow_uid)
    if args.max_line is not None:
        options["max_line"] = args.max_line
    if args.shutdown_grace is not None:
        options["shutdown_grace"] = args.shutdown_grace
    if args.event_queue is not None:
        options["event_queue"] = args.event_queue
    for option in ("max_clients", "max_batch", "max_buffered", "partial_timeout"):
        if getattr(args, option) is not None:
            options[option] = getattr(args, option)
    if args.nats is not None:
        options.update(nats=args.nats, name=args.name, nats_creds=args.nats_creds, nats_ca=args.nats_ca)
        for option in ("nats_ping_interval", "nats_max_pings_out"):
            if getattr(args, option) is not None:
                options[option] = getattr(args, option)
    elif args.name is not None:
        raise ConfigError("--name is the router's name on NATS: it needs --nats URL")
    if args.metrics is not None:
        options["metrics"] = args.metrics
    if args.no_direct:
        options["direct"] = False
    return Config(**options)


def _nats(args: argparse.Namespace) -> dict[str, Any]:
    """The NATS options of `call` and `status`, as `api` takes them."""
    if args.nats is None:
        if args.nats_creds or args.nats_ca or getattr(args, "router", None):
            raise ConfigError("--router, --nats-creds and --nats-ca go with --nats URL")
        return {}
    return {"nats": args.nats, "creds": args.nats_creds, "ca": args.nats_ca}


def _call(args: argparse.Namespace) -> int:
    params = None
    if args.params is not None:
        try:
            params = orjson.loads(args.params)
        except orjson.JSONDecodeError as exc:
            print(f"plugrpc: PARAMS_JSON is not valid JSON: {exc}", file=sys.stderr)
            return 2
        if not isinstance(params, dict | list):
            print("plugrpc: PARAMS_JSON must be a JSON object or array", file=sys.stderr)
            return 2
    try:
        if args.direct and args.nats:
            raise ConfigError("--direct is for the router's unix socket: a connection cannot be handed over NATS")
        result = api.call(args.method, params, socket=args.socket, timeout=args.timeout, router=args.router,
                          direct=args.direct, **_nats(args))
    except RpcError as exc:
        return _print_error(exc)
    except ConnectionLost as exc:
        if exc.error is None:
            raise
        return _print_error(exc.error)  # the router said why it closed (a line over --max-line: -32004)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


def _print_error(exc: RpcError) -> int:
    """A JSON-RPC error as JSON on stderr, exit status 1 (docs/design.md, "Command line and Python API")."""
    sys.stderr.buffer.write(orjson.dumps(exc.to_error()) + b"\n")
    return 1


def _status(args: argparse.Namespace) -> int:
    nats = _nats(args)
    plugins = api.fleet_status(**nats) if nats else api.status(socket=args.socket)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(plugins) + b"\n")
    else:
        sys.stdout.write(status.render(plugins, status.FLEET_COLUMNS if nats else status.COLUMNS))
    return 0


def _reload(args: argparse.Namespace) -> int:
    try:
        outcome = api.reload(socket=args.socket, timeout=args.timeout)
    except RpcError as exc:
        print(f"plugrpc: {printable(exc.message)}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(outcome) + b"\n")
    else:
        for key in ("added", "removed", "changed", "unchanged"):
            print(f"{key + ':':<11}{', '.join(outcome.get(key, [])) or '-'}")
    return 0


def _events(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    try:
        for event in api.events(*args.patterns, socket=args.socket, router=args.router, **_nats(args)):
            out.write(orjson.dumps(event.to_json()) + b"\n")
            out.flush()
    except RpcError as exc:
        return _print_error(exc)
    except BrokenPipeError:  # `plugrpc events | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail
    return 0


def _logs(args: argparse.Namespace) -> int:
    if args.name is None:
        names = "".join(f"\n  {printable(row['name'])}" for row in api.status(socket=args.socket))
        print(f"plugrpc: which plugin? plugrpc logs NAME, one of:{names}", file=sys.stderr)
        return 2
    if args.lines < 0:
        print("plugrpc: -n must be 0 or more", file=sys.stderr)
        return 2
    try:
        for line in api.logs(args.name, args.lines, follow=args.follow, socket=args.socket):
            if args.json:
                sys.stdout.buffer.write(orjson.dumps(line) + b"\n")
            else:
                print(status.log_line(line))
            sys.stdout.flush()
    except RpcError as exc:
        print(f"plugrpc: {printable(exc.data if isinstance(exc.data, str) else exc.message)}", file=sys.stderr)
        return 1
    except ConnectionLost:
        print("plugrpc: the router went away", file=sys.stderr)
        return 1
    return 0


def _new(args: argparse.Namespace) -> int:
    try:
        made = api.new(args.name, args.dir)
    except OSError as exc:
        print(f"plugrpc: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {made.plugin}")
    print(f"{'wrote' if made.manifest_created else f'added [plugin.{made.name}] to'} {made.manifest}")
    print(f"wrote {made.test}")
    print(f"\nrun it:   plugrpc run --root {made.root}")
    print(f"call it:  plugrpc call {made.name}.hello '{{\"name\": \"Ada\"}}'")
    print(f"test it:  python -m pytest {made.test}")
    return 0


def _conform(args: argparse.Namespace) -> int:
    from . import conform

    try:
        methods = {key: conform.Method.parse(f"--{key}", getattr(args, key))
                   for key in ("call", "slow", "event", "progress")}
    except ValueError as exc:
        print(f"plugrpc: {exc}", file=sys.stderr)
        return 2
    path = args.path.absolute()
    if not (path.is_file() and os.access(path, os.X_OK)):
        print(f"plugrpc: {args.path} is not an executable file", file=sys.stderr)
        return 2
    options = conform.Options(path, args.root, timeout=args.timeout, grace=args.grace, **methods)
    return conform.conform(options, exec_mode=args.exec)


COMMANDS = {"call": _call, "status": _status, "reload": _reload, "events": _events, "new": _new, "logs": _logs,
            "conform": _conform}


EXTRA_HINTS: Final = {"call": "PARAMS is one JSON text: quote it, as in '[1, 2]' or '{\"name\": \"Ada\"}'"}
"""What to say besides the usage when a command gets words it does not take."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the command's own usage, not the top-level one
        hint = EXTRA_HINTS.get(args.command)
        args.usage.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; {hint}" if hint else ""))
    if args.command == "run" and pid1.is_init():
        # A container's first process: an init forwards signals to the router and reaps orphans.
        return pid1.run_as_init(lambda: _command(args))
    return _command(args)


def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            api.run(_config(args))
            return 0
        return COMMANDS[args.command](args)
    except (ManifestError, ConfigError, ConnectError) as exc:
        print(f"plugrpc: {printable(str(exc))}", file=sys.stderr)
        return 2
    except PlugrpcError as exc:
        print(f"plugrpc: {printable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
