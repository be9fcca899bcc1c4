"""`plugrpc` on the command line: parse arguments, build a `Config`, call `api`.

    plugrpc run  [--root DIR] [--socket PATH] ...   serve an image's plugins
    plugrpc call [--socket PATH] METHOD [PARAMS]    call a method, print its result as JSON
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from . import api
from .config import EXAMPLE_ROOT, Config, default_socket
from .errors import ConfigError, ConnectError, ManifestError, PlugrpcError, RpcError


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an octal mode like 0600, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plugrpc", description="Plugins as persistent JSON-RPC 2.0 servers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    socket_help = f"the router's front socket (default: {default_socket()}, or $PLUGRPC_SOCKET)"

    run = sub.add_parser("run", help="supervise an image's plugins and serve the router",
                         description="Supervise the plugins of an image and serve calls on a unix socket. "
                                     "Ready when the socket accepts connections; SIGINT/SIGTERM stop it.")
    run.add_argument("--root", type=Path, default=EXAMPLE_ROOT,
                     help="image root holding .plugin.toml (default: the bundled example image)")
    run.add_argument("--socket", type=Path, default=None, help=socket_help)
    run.add_argument("--socket-mode", type=_octal, default=0o600, help="front socket permissions (default 0600)")
    run.add_argument("--allow-uid", type=int, action="append", default=None, metavar="UID",
                     help="only accept clients with this uid (SO_PEERCRED); repeatable")
    run.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto", help="event loop (default: uvloop)")
    run.add_argument("--max-line", type=int, default=None, metavar="BYTES", help="maximum message size in bytes")
    run.add_argument("--shutdown-grace", type=float, default=None, metavar="SECONDS",
                     help="time in-flight calls get on shutdown (default 10)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-json", action="store_true", help="log JSON lines instead of text")

    call = sub.add_parser("call", help="call METHOD through a running router and print the result",
                          description="Print the result as JSON on stdout; on a JSON-RPC error print it on "
                                      "stderr and exit 1.")
    call.add_argument("--socket", type=Path, default=None, help=socket_help)
    call.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    call.add_argument("method", metavar="METHOD", help="plugin.method, e.g. ovs.version")
    call.add_argument("params", metavar="PARAMS_JSON", nargs="?", default=None,
                      help="params as a JSON object or array, e.g. '{\"a\": 1}'")
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
    return Config(**options)


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
        result = api.call(args.method, params, socket=args.socket, timeout=args.timeout)
    except RpcError as exc:
        sys.stderr.buffer.write(orjson.dumps({"code": exc.code, "message": exc.message, "data": exc.data}) + b"\n")
        return 1
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            api.run(_config(args))
            return 0
        return _call(args)
    except (ManifestError, ConfigError, ConnectError) as exc:
        print(f"plugrpc: {exc}", file=sys.stderr)
        return 2
    except PlugrpcError as exc:
        print(f"plugrpc: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
